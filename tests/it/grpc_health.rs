//! gRPC health checks (`grpc.health.v1.Health/Check`) against a real tonic health server.
