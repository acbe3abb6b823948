//! Addresses of a test cluster and the command line each node gets.
//!
//! Each node listens for peers on its real peer address and for clients on its real client
//! address. With proxies, node `i` dials peer `j` through its own proxy `P(i→j)`, so its
//! `--peers` list differs from every other node's: entry `j ≠ i` is `P(i→j)`, entry `i` is
//! `i`'s real listen address (where it listens). Clients use the client proxies.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;

use super::network::Link;
use super::options::ClusterOptions;
use super::tls::TlsFiles;

/// A loopback port picked by the OS and held (bound) until [`ReservedPort::release`], so no
/// other allocation in this process can pick it meanwhile. Between release and the server's
/// own bind there is a small race with other processes, which we accept.
#[derive(Debug)]
pub struct ReservedPort {
    listener: TcpListener,
    addr: SocketAddr,
}

impl ReservedPort {
    /// Binds `127.0.0.1:0`.
    pub fn new() -> io::Result<ReservedPort> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let addr = listener.local_addr()?;
        Ok(ReservedPort { listener, addr })
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Frees the port for the process that is about to bind it.
    pub fn release(self) -> SocketAddr {
        drop(self.listener);
        self.addr
    }
}

/// Every address of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Where each node listens for peer connections.
    pub peer_listen: BTreeMap<u64, SocketAddr>,
    /// Where each node listens for clients.
    pub client_listen: BTreeMap<u64, SocketAddr>,
    /// The proxy of each link `(from, to)`, forwarding to `peer_listen[to]`; `None` without
    /// proxies.
    pub peer_proxies: Option<BTreeMap<Link, SocketAddr>>,
    /// The proxy in front of each node's client address; `None` without proxies.
    pub client_proxies: Option<BTreeMap<u64, SocketAddr>>,
    /// The certificates of a cluster with TLS everywhere; `None`: plain TCP.
    pub tls: Option<TlsFiles>,
}

impl Layout {
    /// The member ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.peer_listen.keys().copied().collect()
    }

    /// The address node `from` dials to send to node `to`.
    pub fn dial_addr(&self, from: u64, to: u64) -> SocketAddr {
        match &self.peer_proxies {
            Some(proxies) if from != to => proxies[&(from, to)],
            _ => self.peer_listen[&to],
        }
    }

    /// The address clients use to reach node `id` (its client proxy, if any).
    pub fn client_endpoint(&self, id: u64) -> SocketAddr {
        match &self.client_proxies {
            Some(proxies) => proxies[&id],
            None => self.client_listen[&id],
        }
    }

    /// Node `id`'s `--peers` value: `1=ADDR,2=ADDR,…` with [`Layout::dial_addr`] entries.
    pub fn peers_arg(&self, id: u64) -> String {
        join_entries(
            self.ids()
                .into_iter()
                .map(|to| (to, self.dial_addr(id, to))),
        )
    }

    /// The `--client-addrs` value: where clients should go for each node.
    pub fn client_addrs_arg(&self) -> String {
        join_entries(
            self.ids()
                .into_iter()
                .map(|id| (id, self.client_endpoint(id))),
        )
    }

    /// The full command line (without the program) of node `id`.
    pub fn node_args(&self, id: u64, data_dir: &Path, opts: &ClusterOptions) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "--id".into(),
            id.to_string().into(),
            "--peers".into(),
            self.peers_arg(id).into(),
            "--client-addr".into(),
            self.client_listen[&id].to_string().into(),
            "--data-dir".into(),
            data_dir.into(),
            "--client-addrs".into(),
            self.client_addrs_arg().into(),
        ];
        if let Some(p) = opts.acceptor_fail_prob {
            args.extend(["--acceptor-fail-prob".into(), p.to_string().into()]);
        }
        if let Some(mode) = &opts.acceptor_fail_mode {
            args.extend(["--acceptor-fail-mode".into(), mode.into()]);
        }
        if let Some((min, max)) = opts.acceptor_down_ms {
            args.extend(["--acceptor-down-ms".into(), format!("{min}..{max}").into()]);
        }
        if let Some(n) = opts.snapshot_every {
            args.extend(["--snapshot-every".into(), n.to_string().into()]);
        }
        if let Some(tls) = &self.tls {
            args.extend(tls.node_args(id));
        }
        args.extend(opts.extra_args.iter().map(OsString::from));
        args
    }
}

fn join_entries(entries: impl Iterator<Item = (u64, SocketAddr)>) -> String {
    entries
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    /// Node i listens for peers on 700i and clients on 800i; proxy P(i→j) is 90ij, client
    /// proxy C(i) is 600i.
    fn layout(proxies: bool) -> Layout {
        let ids = [1u64, 2, 3];
        Layout {
            peer_listen: ids.iter().map(|&i| (i, addr(7000 + i as u16))).collect(),
            client_listen: ids.iter().map(|&i| (i, addr(8000 + i as u16))).collect(),
            peer_proxies: proxies.then(|| {
                super::super::network::all_links(&ids)
                    .into_iter()
                    .map(|(f, t)| ((f, t), addr(9000 + 10 * f as u16 + t as u16)))
                    .collect()
            }),
            client_proxies: proxies
                .then(|| ids.iter().map(|&i| (i, addr(6000 + i as u16))).collect()),
            tls: None,
        }
    }

    #[test]
    fn peers_without_proxies_are_the_same_for_everyone() {
        let l = layout(false);
        for id in 1..=3 {
            assert_eq!(
                l.peers_arg(id),
                "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
            );
        }
        assert_eq!(
            l.client_addrs_arg(),
            "1=127.0.0.1:8001,2=127.0.0.1:8002,3=127.0.0.1:8003"
        );
    }

    #[test]
    fn peers_with_proxies_dial_own_proxies_and_list_own_listen_address() {
        let l = layout(true);
        assert_eq!(
            l.peers_arg(1),
            "1=127.0.0.1:7001,2=127.0.0.1:9012,3=127.0.0.1:9013"
        );
        assert_eq!(
            l.peers_arg(2),
            "1=127.0.0.1:9021,2=127.0.0.1:7002,3=127.0.0.1:9023"
        );
        assert_eq!(
            l.peers_arg(3),
            "1=127.0.0.1:9031,2=127.0.0.1:9032,3=127.0.0.1:7003"
        );
        assert_eq!(
            l.client_addrs_arg(),
            "1=127.0.0.1:6001,2=127.0.0.1:6002,3=127.0.0.1:6003"
        );
        assert_eq!(l.client_endpoint(2), addr(6002));
    }

    #[test]
    fn node_args_in_full() {
        let l = layout(true);
        let opts = ClusterOptions {
            acceptor_fail_prob: Some(0.05),
            acceptor_fail_mode: Some("amnesia".into()),
            acceptor_down_ms: Some((100, 500)),
            snapshot_every: Some(1000),
            extra_args: vec!["--log-level".into(), "debug".into()],
            ..ClusterOptions::default()
        };
        let args = l.node_args(2, Path::new("/data/node-2"), &opts);
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--id",
                "2",
                "--peers",
                "1=127.0.0.1:9021,2=127.0.0.1:7002,3=127.0.0.1:9023",
                "--client-addr",
                "127.0.0.1:8002",
                "--data-dir",
                "/data/node-2",
                "--client-addrs",
                "1=127.0.0.1:6001,2=127.0.0.1:6002,3=127.0.0.1:6003",
                "--acceptor-fail-prob",
                "0.05",
                "--acceptor-fail-mode",
                "amnesia",
                "--acceptor-down-ms",
                "100..500",
                "--snapshot-every",
                "1000",
                "--log-level",
                "debug",
            ]
        );
        let plain = layout(false).node_args(1, Path::new("/d"), &ClusterOptions::default());
        assert_eq!(plain.len(), 10);
    }

    #[test]
    fn tls_gives_every_node_its_certificate_on_both_ports_and_requires_client_certificates() {
        let mut l = layout(true);
        l.tls = Some(TlsFiles::at(Path::new("/tls")));
        let args = l.node_args(2, Path::new("/d"), &ClusterOptions::default());
        let args: Vec<&str> = args.iter().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args[10..],
            [
                "--cert-file",
                "/tls/node-2.pem",
                "--key-file",
                "/tls/node-2-key.pem",
                "--trusted-ca-file",
                "/tls/ca.pem",
                "--client-cert-auth",
                "--peer-cert-file",
                "/tls/node-2.pem",
                "--peer-key-file",
                "/tls/node-2-key.pem",
                "--peer-trusted-ca-file",
                "/tls/ca.pem",
            ]
        );
    }

    #[test]
    fn reserved_ports_are_distinct_loopback_and_free_after_release() {
        let reserved: Vec<ReservedPort> = (0..8).map(|_| ReservedPort::new().unwrap()).collect();
        let ports: BTreeSet<u16> = reserved.iter().map(|r| r.addr().port()).collect();
        assert_eq!(ports.len(), 8, "ports must be distinct");
        // While held, nobody else can bind it.
        assert!(TcpListener::bind(reserved[0].addr()).is_err());
        for r in reserved {
            assert!(r.addr().ip().is_loopback());
            let addr = r.release();
            TcpListener::bind(addr).expect("released port can be bound");
        }
    }
}
