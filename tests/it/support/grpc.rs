//! A real gRPC server (tonic, a hand-written service over the prost codec) whose answers a
//! test scripts, and a tonic client for it.
