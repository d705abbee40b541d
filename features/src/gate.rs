//! A port that refuses connections until it is opened, then forwards each connection to a
//! target: a database that comes up after the OMA (a host rebooting, MariaDB starting late), or
//! goes away for a while (closing the gate cuts every connection and refuses new ones).

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

pub struct Gate {
    port: u16,
    target: String,
    forwarder: Option<JoinHandle<()>>,
}

impl Gate {
    /// A closed gate in front of `target` (`host:port`): nothing listens on its port yet.
    pub fn closed(target: &str) -> Gate {
        Gate { port: oma_test_support::free_port(), target: target.to_string(), forwarder: None }
    }

    /// A closed gate in front of the database of `url` (`mysql://…`), and the same URL through it.
    pub fn in_front_of(url: &str) -> anyhow::Result<(Gate, String)> {
        let mut url = reqwest::Url::parse(url).context("a database URL")?;
        let target =
            format!("{}:{}", url.host_str().context("a database URL with a host")?, url.port().unwrap_or(3306));
        let gate = Gate::closed(&target);
        url.set_host(Some("127.0.0.1")).context("host")?;
        url.set_port(Some(gate.port())).map_err(|()| anyhow::anyhow!("cannot set the port of {url}"))?;
        Ok((gate, url.to_string()))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_open(&self) -> bool {
        self.forwarder.is_some()
    }

    /// Start accepting on the gate's port; each connection is forwarded to the target until
    /// either side closes it or the gate is dropped. Opening an open gate does nothing.
    pub async fn open(&mut self) -> anyhow::Result<()> {
        if self.forwarder.is_some() {
            return Ok(());
        }
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .with_context(|| format!("opening the gate on port {}", self.port))?;
        let target = self.target.clone();
        self.forwarder = Some(tokio::spawn(async move {
            // Dropping the set (the gate's drop aborts this task) ends every forwarded connection.
            let mut connections = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let target = target.clone();
                connections.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        Ok(())
    }

    /// Cut every forwarded connection and refuse new ones, like a database going down.
    pub async fn close(&mut self) {
        if let Some(f) = self.forwarder.take() {
            f.abort();
            let _ = f.await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(f) = self.forwarder.take() {
            f.abort();
        }
    }
}
