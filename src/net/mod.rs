//! Network drivers: the only module with sockets and clocks (placeholder until the drivers land).
