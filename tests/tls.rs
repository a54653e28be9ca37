//! Verified mutual TLS: a node started with the cluster's certificate authority serves
//! clients holding one of its certificates and nobody else, and nodes holding such
//! certificates form a cluster.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use casty_client::{Client, ClientError, Tls, Verified};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::{Host, wait_formed};

/// A certificate authority, and the PEM files of what it issued, in a temporary directory.
struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: tempfile::TempDir,
}

/// The PEM files one process is started with.
struct Issued {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Authority {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), issuer.pem()).unwrap();
        Self { issuer, dir }
    }

    /// A certificate for `name`, valid at the loopback address.
    fn issue(&self, name: &str) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &*self.issuer).unwrap();
        let path = |file: String| self.dir.path().join(file);
        let issued = Issued {
            ca: path("ca.pem".into()),
            cert: path(format!("{name}.pem")),
            key: path(format!("{name}-key.pem")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        issued
    }
}

impl Issued {
    fn flags(&self) -> Vec<String> {
        [("--tls-ca", &self.ca), ("--tls-cert", &self.cert), ("--tls-key", &self.key)]
            .into_iter()
            .flat_map(|(flag, path)| [flag.to_owned(), path.display().to_string()])
            .collect()
    }

    fn tls(&self) -> Tls {
        Tls::Verified(Arc::new(Verified::from_pem_files(&self.ca, &self.cert, &self.key).unwrap()))
    }
}

fn refs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

/// What a client authenticating as `tls` gets when it writes to the node at `host`.
async fn write_as(tls: Tls, host: &Host) -> Result<i64, ClientError> {
    let client = Client::builder().timeout(Duration::from_secs(2)).tls(tls).connect([host.addr]).await?;
    client.distributed().counter("tls").timeout(Duration::from_secs(2)).increment(1).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_node_serves_only_clients_of_its_authority() {
    let cluster = Authority::new("cluster authority");
    let node = cluster.issue("node-1");
    let host = Host::start_tls(&refs(&node.flags()), cluster.issue("client").tls()).await;
    assert!(host.log().contains("verified mutual TLS"), "{}", host.log());
    assert_eq!(write_as(cluster.issue("client").tls(), &host).await.unwrap(), 1);
    let cli = cluster.issue("cli");
    let out = host.cli(&[refs(&cli.flags()), vec!["counter", "tls", "increment", "1"]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    // Without a certificate, with one of another authority, or trusting another
    // authority than the node's: refused, and nothing is written.
    let other = Authority::new("another authority");
    let mut foreign_certificate = other.issue("stranger");
    foreign_certificate.ca = node.ca.clone();
    let mut trusts_other = cluster.issue("client");
    trusts_other.ca = other.dir.path().join("ca.pem");
    let strangers = [
        ("no certificate", Tls::Development, "peer sent no certificates"),
        (
            "another authority's certificate",
            foreign_certificate.tls(),
            "aborted by peer: the cryptographic handshake failed",
        ),
        ("trusting another authority", trusts_other.tls(), "invalid peer certificate: UnknownIssuer"),
    ];
    for (who, tls, why) in strangers {
        let err = write_as(tls, &host).await.expect_err(who);
        assert!(matches!(err, ClientError::Connect { .. }), "{who}: {err}");
        assert!(err.to_string().contains(why), "{who}: {err}");
    }
    assert_eq!(write_as(cluster.issue("client").tls(), &host).await.unwrap(), 3, "strangers wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_holding_certificates_of_one_authority_form_a_cluster() {
    let cluster = Authority::new("cluster authority");
    let client = cluster.issue("client").tls();
    let first = cluster.issue("node-1").flags();
    let first = Host::start_tls(&[refs(&first), vec!["--node-id", "node-1"]].concat(), client.clone()).await;
    let seed = first.addr.to_string();
    let second = cluster.issue("node-2").flags();
    let second =
        Host::start_tls(&[refs(&second), vec!["--node-id", "node-2", "--seed", &seed]].concat(), client)
            .await;
    let hosts = vec![first, second];
    wait_formed(&hosts, 2).await;
    let through_first = hosts[0].client().await.distributed();
    assert_eq!(through_first.counter("across").increment(5).await.unwrap(), 5);
    let through_second = hosts[1].client().await.distributed();
    assert_eq!(through_second.counter("across").get().await.unwrap(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_node_takes_its_tls_from_the_builder() {
    let cluster = Authority::new("cluster authority");
    let node = casty_node::Node::builder()
        .bind("127.0.0.1:0".parse().unwrap())
        .tls(cluster.issue("node").tls())
        .start();
    let node = node.await.unwrap();
    let connect = |tls: Tls| Client::builder().tls(tls).connect([node.local_addr()]);
    let client = connect(cluster.issue("client").tls()).await.unwrap();
    assert_eq!(client.distributed().counter("embedded").increment(2).await.unwrap(), 2);
    let err = connect(Tls::Development).await.expect_err("a client without a certificate");
    assert!(err.to_string().contains("peer sent no certificates"), "{err}");
    node.shutdown().await;
}
