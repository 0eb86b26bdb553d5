//! Binding sockets inside a named network namespace (`ip netns add NAME`). A socket belongs
//! to the namespace of the thread that created it, for its whole life; so a short-lived
//! thread joins the namespace, creates the sockets and hands them back, and the runtime in
//! the benchmark's own namespace drives them.

use anyhow::Context;
use nix::sched::{CloneFlags, setns};

/// Runs `make` on a thread that joined `/run/netns/NAME`.
pub fn within<T: Send + 'static>(
    name: &str,
    make: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{name}");
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).context("setns (are you root?)")?;
        make()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in namespace {name} panicked"))?
}

/// A non-blocking, unconnected TCP socket (made inside a namespace, connected later).
pub fn tcp_socket() -> anyhow::Result<std::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    Ok(socket.into())
}
