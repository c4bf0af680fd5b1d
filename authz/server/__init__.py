"""The gRPC sidecar: servicers, proto conversion, error mapping, admin auth, health, metrics, decision log and start-up."""
