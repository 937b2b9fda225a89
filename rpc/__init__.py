"""The gRPC service that publishes the trained vectors: snapshot loading, ANN search, the server."""
