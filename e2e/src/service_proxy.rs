//! A stand-in for a Service in the local world, where no kube-proxy runs: a TCP listener on
//! 127.0.0.1 that hands each new connection to the next backend accepting it (round robin,
//! skipping backends that refuse or time out, as kube-proxy skips endpoints that are not ready)
//! and splices the bytes both ways. TLS passes through untouched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::Result;

pub struct ServiceProxy {
    pub addr: SocketAddr,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections that found no backend accepting them.
    refused: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl ServiceProxy {
    pub async fn start(backends: Vec<SocketAddr>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let backends = Arc::new(Mutex::new(backends));
        let refused = Arc::new(AtomicU64::new(0));
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (backends, refused) = (backends.clone(), refused.clone());
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let candidates = backends
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone();
                    let (next, refused) = (next.clone(), refused.clone());
                    tokio::spawn(async move {
                        let start = next.fetch_add(1, Ordering::Relaxed);
                        for i in 0..candidates.len() {
                            let backend = candidates[(start + i) % candidates.len()];
                            let connect =
                                tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(backend));
                            if let Ok(Ok(server)) = connect.await {
                                splice(client, server).await;
                                return;
                            }
                        }
                        refused.fetch_add(1, Ordering::Relaxed);
                    });
                }
            }
        });
        Ok(Self {
            addr,
            backends,
            refused,
            task,
        })
    }

    /// Replaces the backends (new connections only; open ones stay where they are).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self
            .backends
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = backends;
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

async fn splice(mut client: TcpStream, mut server: TcpStream) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
