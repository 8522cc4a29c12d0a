"""The allocator: network subnets and VNIs, task addresses, node addresses, service VIPs
and published ports. The loop (``controller``, an elected runnable) applies what the pure
decisions (``allocations``) say, over the IPAM arithmetic (``ipam``)."""
