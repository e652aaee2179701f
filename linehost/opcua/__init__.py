"""OPC UA: the line as an address space (asyncua)."""
