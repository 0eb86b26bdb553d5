//! Loopback ports for components a test starts as processes (in-process components are given
//! a listener bound to `127.0.0.1:0` instead).

/// A loopback address with a port free at the time of asking.
pub fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}
