//! A TCP relay on loopback the test controls: it can hang its first
//! connections (a peer that accepts and never answers) and be cut, closing
//! every relayed connection at once (a service that went away).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

pub struct TcpRelay {
    pub port: u16,
    cut: CancellationToken,
}

impl TcpRelay {
    /// Relays to `to`; the first `hang` connections are accepted and held
    /// without a byte in either direction.
    pub async fn start(to: SocketAddr, hang: usize) -> TcpRelay {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a relay");
        let port = listener.local_addr().expect("relay address").port();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let mut inbound = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => return,
                    },
                };
                if held.len() < hang {
                    held.push(inbound);
                    continue;
                }
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(to).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        TcpRelay { port, cut }
    }

    /// Closes the listener and every relayed connection.
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.cut.cancel();
    }
}
