"""The distributor: each node's copies of the Secrets and Configs its tasks use."""
