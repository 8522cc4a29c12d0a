"""The allocator controller: network subnets and VNIs, task addresses, node addresses,
service VIPs and published ports (``controller``), decided by the pure IPAM (``ipam``)."""
