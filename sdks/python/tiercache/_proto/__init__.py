"""Generated gRPC and protobuf modules; see sdks/python/generate.sh."""
