"""The Envoy xDS vocabulary the API speaks (REST-JSON EDS and CDS), and how much one request may ask. Pure."""

CLA_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
MAX_CLUSTERS = 100  # per EDS DiscoveryRequest
MAX_NAMES = 1000  # per CDS DiscoveryRequest
