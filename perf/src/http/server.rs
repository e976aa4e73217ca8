//! A minimal HTTP/1 server on loopback: an accept loop that hands each
//! connection to hyper, and a handle that stops it (closing the listener and
//! cutting every open connection) and starts it again on the same address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// The body type every server here answers with.
pub type Body = Full<Bytes>;

/// Builds the handler of one request. Cloned per connection.
pub trait Handler: Clone + Send + Sync + 'static {
    /// The error that makes hyper close the connection without an answer.
    type Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static;
    /// Handles one request.
    fn handle(
        &self,
        req: Request<Incoming>,
    ) -> impl Future<Output = Result<Response<Body>, Self::Error>> + Send + 'static + use<Self>;
}

/// A server: its address, and the task accepting connections while it is up.
pub struct Server<H> {
    addr: SocketAddr,
    handler: H,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl<H: Handler> Server<H> {
    /// Binds `addr` (port 0: any free port) and starts serving.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub fn start(addr: SocketAddr, handler: H) -> io::Result<Server<H>> {
        let listener = bind(addr)?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(accept_loop(listener, handler.clone()));
        Ok(Server {
            addr,
            handler,
            task: Mutex::new(Some(task)),
        })
    }

    /// The address it listens on (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether it is accepting connections.
    pub fn is_up(&self) -> bool {
        self.task.lock().is_ok_and(|t| t.is_some())
    }

    /// Closes the listener and cuts every open connection.
    pub fn stop(&self) {
        if let Ok(mut slot) = self.task.lock()
            && let Some(task) = slot.take()
        {
            // Aborting the accept loop drops its listener and its set of
            // connection tasks, which aborts them too.
            task.abort();
        }
    }

    /// Listens again on the same address (after [`stop`](Self::stop)).
    ///
    /// # Errors
    ///
    /// When the address cannot be bound again.
    pub fn restart(&self) -> io::Result<()> {
        let Ok(mut slot) = self.task.lock() else {
            return Err(io::Error::other("server state poisoned"));
        };
        if slot.is_none() {
            let listener = bind(self.addr)?;
            *slot = Some(tokio::spawn(accept_loop(listener, self.handler.clone())));
        }
        Ok(())
    }
}

impl<H> Drop for Server<H> {
    fn drop(&mut self) {
        if let Ok(slot) = self.task.get_mut()
            && let Some(task) = slot.take()
        {
            task.abort();
        }
    }
}

/// A listener with `SO_REUSEADDR`, so a restarted server gets its port back
/// while old connections linger in `TIME_WAIT`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts until aborted (every run aborts its servers when it ends).
async fn accept_loop<H: Handler>(listener: TcpListener, handler: H) {
    let mut connections = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, or a connection reset before accept:
                // pause briefly rather than spin.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handler.handle(req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        // Forget the connections that ended, so the set stays as large as
        // the connections open.
        while connections.try_join_next().is_some() {}
    }
}

/// A response with `status`, a short body, and extra headers.
pub fn respond(
    status: u16,
    headers: &[(&'static str, &str)],
    body: &'static str,
) -> Response<Body> {
    let mut builder = Response::builder().status(status);
    for &(name, value) in headers {
        builder = builder.header(name, value);
    }
    builder
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"bad response\n"))))
}
