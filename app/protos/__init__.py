"""Generated gRPC stubs of the KServe v2 protocol (see grpc_predict_v2.proto)."""
