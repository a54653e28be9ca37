//! The remote client: one QUIC connection to a node, one long-lived stream, and
//! requests multiplexed on it by request id.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::ToSocketAddrs;
use tokio::sync::{Semaphore, oneshot};

use casty_core::limits::{CLIENT_TIMEOUT_DEFAULT_MS, COMPONENT_CHUNK_BYTES, STREAM_IN_FLIGHT_MAX};
use casty_core::protocol::{
    self, DeployReport, Deployment, ErrorKind, Invoke, Request, Response, StatusReport, TypeInfo,
};
use casty_core::routing::ShardKey;
use casty_transport::tls::Tls;

use crate::retry::retrying;
use crate::{Admin, Backend, BoxFuture, ClientError, Distributed, RequestIds, Zero, duration_ms};

/// A connection to a Casty cluster through one of the given node addresses.
#[derive(Clone)]
pub struct Client {
    remote: Arc<Remote>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addrs", &self.remote.addrs)
            .field("id", &self.remote.ids.client_id())
            .finish()
    }
}

struct Remote {
    addrs: Vec<SocketAddr>,
    tls: Tls,
    /// The address this client's endpoints bind (port 0: any free one).
    local: IpAddr,
    ids: RequestIds,
    /// The live connection; replaced when it is lost.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    connect_timeout: Duration,
    /// Where each partition's leader is, as last learned.
    routes: Mutex<Routes>,
    /// Connections to other nodes: partition leaders, and members asked for their status.
    direct: tokio::sync::Mutex<HashMap<SocketAddr, Arc<Conn>>>,
}

/// The partition map as the client last learned it from a node's status.
#[derive(Default)]
struct Routes {
    partitions: u32,
    leaders: HashMap<u32, SocketAddr>,
    learned: Option<tokio::time::Instant>,
}

/// How often the client learns the partition map again (and at once after a failure).
const ROUTES_REFRESH: Duration = Duration::from_secs(2);
/// How long connecting to a partition's leader may take before the command goes the
/// long way, through the connected node (a live node in the same network answers in
/// milliseconds; a dead one never does).
const ROUTE_CONNECT_TIMEOUT: Duration = Duration::from_millis(250);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Response>>>>;

/// A connection and the one stream that carries its requests (deploys aside): one, so
/// that answers released together leave in one write (why, and what it costs: the
/// decisions in ARCHITECTURE.md).
struct Conn {
    connection: quinn::Connection,
    /// Kept so the endpoint's socket lives as long as the connection.
    _endpoint: quinn::Endpoint,
    send: tokio::sync::Mutex<quinn::SendStream>,
    pending: Pending,
    in_flight: Semaphore,
    next_id: AtomicU64,
}

/// Options for connecting a [`Client`]: `Client::builder().tls(..).connect(addrs)`.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    timeout: Duration,
    tls: Tls,
}

impl ClientBuilder {
    /// How long connecting to each address may take (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How to authenticate the nodes and this client (default: development mode, which
    /// verifies nothing); a cluster that runs verified mutual TLS refuses clients without
    /// a certificate of its authority.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }

    /// Connects to the first reachable node among `addrs` (`"127.0.0.1:25520"`, ...).
    pub async fn connect<A: ToSocketAddrs + std::fmt::Display>(
        self,
        addrs: impl IntoIterator<Item = A>,
    ) -> Result<Client, ClientError> {
        duration_ms("the connect timeout", self.timeout, Zero::Refused)?;
        let mut resolved = Vec::new();
        for addr in addrs {
            let typed = addr.to_string();
            let found = tokio::net::lookup_host(addr).await.map_err(|e| ClientError::Connect {
                addr: typed,
                reason: format!("{e} (give HOST:PORT, for example 127.0.0.1:25520)"),
            })?;
            resolved.extend(found);
        }
        if resolved.is_empty() {
            return Err(ClientError::NoAddress);
        }
        let remote = Remote {
            addrs: resolved,
            tls: self.tls,
            local: IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            ids: RequestIds::new(format!("client-{}", uuid::Uuid::new_v4())),
            conn: tokio::sync::Mutex::new(None),
            connect_timeout: self.timeout,
            routes: Mutex::default(),
            direct: tokio::sync::Mutex::default(),
        };
        remote.connection().await?;
        Ok(Client { remote: Arc::new(remote) })
    }
}

impl Client {
    /// Options for connecting: a timeout, and TLS.
    pub fn builder() -> ClientBuilder {
        ClientBuilder { timeout: Duration::from_millis(CLIENT_TIMEOUT_DEFAULT_MS), tls: Tls::Development }
    }

    /// Connects to the first reachable node among `addrs` (`"127.0.0.1:25520"`, ...),
    /// giving each address the default timeout of 5 s, in TLS development mode.
    pub async fn connect<A: ToSocketAddrs + std::fmt::Display>(
        addrs: impl IntoIterator<Item = A>,
    ) -> Result<Self, ClientError> {
        Self::builder().connect(addrs).await
    }

    /// Connects as [`Client::connect`] does, giving each address `timeout`.
    pub async fn connect_timeout<A: ToSocketAddrs + std::fmt::Display>(
        addrs: impl IntoIterator<Item = A>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        Self::builder().timeout(timeout).connect(addrs).await
    }

    /// A client of the node at `addr` that connects on its first request (and again
    /// after a lost connection), from the address `local` (unspecified: any). Nodes use
    /// it to talk to each other, each from its own address, so a peer's traffic can be
    /// told from the others' (and cut off, in the fault tests).
    pub fn lazy(addr: SocketAddr, timeout: Duration, tls: Tls, local: IpAddr) -> Self {
        let remote = Remote {
            addrs: vec![addr],
            tls,
            local,
            ids: RequestIds::new(format!("peer-{}", uuid::Uuid::new_v4())),
            conn: tokio::sync::Mutex::new(None),
            connect_timeout: timeout,
            routes: Mutex::default(),
            direct: tokio::sync::Mutex::default(),
        };
        Self { remote: Arc::new(remote) }
    }

    /// Sends one request as it is and returns the node's response: no retries, no
    /// interpretation. The facades are the way to call entities; this is for node-to-node
    /// traffic.
    pub async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        self.remote.request(request).await
    }

    /// The structures, as `system.distributed()` in the seed API.
    pub fn distributed(&self) -> Distributed {
        Distributed::new(self.remote.clone())
    }

    /// The cluster's administration: status, readiness, types and deploys.
    pub fn admin(&self) -> Admin {
        Admin::new(self.remote.clone())
    }

    /// Describes the node this client is connected to and its cluster; see [`Admin`].
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.admin().status().await
    }

    /// The entities of a deployed type; see [`Distributed::entity`].
    pub fn entity<C, R>(&self, entity_type: &str) -> crate::Entities<C, R> {
        self.distributed().entity(entity_type)
    }

    /// Deploys a component as the next version of `entity_type`; see
    /// [`Distributed::deploy_with`].
    pub async fn deploy(&self, wasm: Vec<u8>, entity_type: &str) -> Result<DeployReport, ClientError> {
        self.distributed().deploy(wasm, entity_type).await
    }

    /// Deploys a component with its own limits; see [`Distributed::deploy_with`].
    pub async fn deploy_with(&self, deployment: Deployment) -> Result<DeployReport, ClientError> {
        self.distributed().deploy_with(deployment).await
    }

    /// Every entity type the cluster runs, with each version; see [`Admin`].
    pub async fn types(&self) -> Result<Vec<TypeInfo>, ClientError> {
        self.admin().types().await
    }
}

impl Remote {
    /// The live connection, or a new one when there is none or it was lost.
    async fn connection(&self) -> Result<Arc<Conn>, ClientError> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.connection.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        let mut last_error = ClientError::NoAddress;
        for addr in &self.addrs {
            match self.open(*addr, self.connect_timeout).await {
                Ok(conn) => {
                    let conn = Arc::new(conn);
                    *slot = Some(conn.clone());
                    return Ok(conn);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let conn = self.connection().await?;
        match request {
            Request::Deploy(deployment) => conn.deploy_on_own_stream(Request::Deploy, deployment).await,
            Request::CommitDeploy(deployment) => {
                conn.deploy_on_own_stream(Request::CommitDeploy, deployment).await
            }
            _ => conn.request(request).await,
        }
    }

    /// The leader of the partition a command goes to, when the map is known. Learns the
    /// map when it is old (nodes forward a command sent to a node that no longer leads,
    /// so an old map costs a hop, never a failure).
    async fn leader_of(&self, shard: Option<&ShardKey>) -> Option<SocketAddr> {
        let stale = self.routes().learned.is_none_or(|at| at.elapsed() > ROUTES_REFRESH);
        if stale {
            self.learn_routes().await;
        }
        let routes = self.routes();
        let shard = shard.filter(|_| routes.partitions > 0)?;
        routes.leaders.get(&shard.partition(routes.partitions)).copied()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn learn_routes(&self) {
        self.routes().learned = Some(tokio::time::Instant::now());
        let Ok(Response::Status(report)) = self.request(&Request::Status).await else { return };
        let addresses: HashMap<&str, SocketAddr> = report
            .members
            .iter()
            .filter_map(|m| Some((m.node_id.as_str(), m.address.parse().ok()?)))
            .collect();
        let leaders = report
            .groups
            .iter()
            .filter_map(|g| Some((g.partition, *addresses.get(g.leader.as_deref()?)?)))
            .collect();
        let mut routes = self.routes();
        routes.partitions = report.partitions;
        routes.leaders = leaders;
    }

    /// Sends a command to its partition's leader if known, else to the connected node.
    async fn send_invoke(
        &self,
        shard: Option<&ShardKey>,
        request: &Request,
    ) -> Result<Response, ClientError> {
        let Some(leader) = self.leader_of(shard).await else { return self.request(request).await };
        let Ok(conn) = self.direct(leader, ROUTE_CONNECT_TIMEOUT).await else {
            self.forget_routes();
            return self.request(request).await;
        };
        let result = conn.request(request).await;
        let moved = match &result {
            Err(_) => true,
            Ok(Response::Error(e)) => e.kind == ErrorKind::Unavailable,
            Ok(_) => false,
        };
        if moved {
            self.forget_routes();
        }
        result
    }

    /// A new connection to the node at `addr`, if it answers `within`.
    async fn open(&self, addr: SocketAddr, within: Duration) -> Result<Conn, ClientError> {
        tokio::time::timeout(within, Conn::open(addr, &self.tls, self.local)).await.unwrap_or_else(|_| {
            Err(ClientError::Connect {
                addr: addr.to_string(),
                reason: format!("no answer within {} ms", within.as_millis()),
            })
        })
    }

    /// The live connection to another node than the connected one (a partition's
    /// leader, a member asked for its status), or a new one if it answers `within`.
    async fn direct(&self, addr: SocketAddr, within: Duration) -> Result<Arc<Conn>, ClientError> {
        let cached =
            self.direct.lock().await.get(&addr).filter(|c| c.connection.close_reason().is_none()).cloned();
        if let Some(conn) = cached {
            return Ok(conn);
        }
        // Not under the lock: a node that died must not hold up requests to others.
        let conn = Arc::new(self.open(addr, within).await?);
        self.direct.lock().await.insert(addr, conn.clone());
        Ok(conn)
    }

    /// Makes the next command learn the map again.
    fn forget_routes(&self) {
        let mut routes = self.routes();
        routes.leaders.clear();
        routes.learned = None;
    }
}

impl Conn {
    async fn open(addr: SocketAddr, tls: &Tls, local: IpAddr) -> Result<Self, ClientError> {
        let fail = |reason: String| ClientError::Connect { addr: addr.to_string(), reason };
        let local = match local {
            ip if !ip.is_unspecified() && ip.is_ipv4() == addr.is_ipv4() => SocketAddr::new(ip, 0),
            _ if addr.is_ipv4() => ([0, 0, 0, 0], 0).into(),
            _ => ([0u16; 8], 0).into(),
        };
        let endpoint = casty_transport::client_endpoint(local, tls).map_err(|e| fail(e.to_string()))?;
        // Verified TLS checks that the node's certificate names the address dialed.
        let connecting = endpoint.connect(addr, &addr.ip().to_string()).map_err(|e| fail(e.to_string()))?;
        let connection = connecting.await.map_err(|e| fail(e.to_string()))?;
        let (send, recv) = connection.open_bi().await.map_err(|e| fail(e.to_string()))?;
        let pending: Pending = Arc::default();
        tokio::spawn(read_responses(recv, pending.clone()));
        let conn = Self {
            connection,
            _endpoint: endpoint,
            send: tokio::sync::Mutex::new(send),
            pending,
            in_flight: Semaphore::new(STREAM_IN_FLIGHT_MAX),
            next_id: AtomicU64::new(1),
        };
        // A verifying node refuses a client's certificate (or its lack of one) only after
        // the client's side of the handshake is over, so the connection counts as open once
        // the node has answered. The client cannot tell whether the node verifies, so this
        // holds in development mode too.
        match conn.request(&Request::Ping).await {
            Ok(_) => Ok(conn),
            Err(ClientError::ConnectionLost(reason)) => Err(fail(reason)),
            Err(e) => Err(fail(e.to_string())),
        }
    }

    async fn request(&self, request: &Request) -> Result<Response, ClientError> {
        let _permit = self.in_flight.acquire().await.expect("the semaphore is never closed");
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        protocol::encode_frame(&mut frame, id, request);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(id, tx);
        let written = self.send.lock().await.write_all(&frame).await;
        if let Err(e) = written {
            self.pending.lock().expect("pending lock").remove(&id);
            return Err(self.lost(e.to_string()));
        }
        rx.await.map_err(|_| self.lost("the node closed the stream".into()))
    }

    /// Sends a deploy of `deployment` (the request `kind` makes) on a stream of its own:
    /// the component in chunks that each fit a frame, then the request carrying the last
    /// one. The node joins them back up.
    async fn deploy_on_own_stream(
        &self,
        kind: fn(Deployment) -> Request,
        deployment: &Deployment,
    ) -> Result<Response, ClientError> {
        let (mut send, mut recv) = self.connection.open_bi().await.map_err(|e| self.lost(e.to_string()))?;
        let mut chunks: Vec<&[u8]> = deployment.wasm.chunks(COMPONENT_CHUNK_BYTES).collect();
        let last = chunks.pop().unwrap_or_default();
        let mut frame = Vec::new();
        for chunk in chunks {
            frame.clear();
            protocol::encode_frame(&mut frame, 0, &Request::ComponentChunk(chunk.to_vec()));
            send.write_all(&frame).await.map_err(|e| self.lost(e.to_string()))?;
        }
        let tail = Deployment {
            entity_type: deployment.entity_type.clone(),
            wasm: last.to_vec(),
            memory_max_bytes: deployment.memory_max_bytes,
            call_deadline_ms: deployment.call_deadline_ms,
        };
        frame.clear();
        protocol::encode_frame(&mut frame, 1, &kind(tail));
        send.write_all(&frame).await.map_err(|e| self.lost(e.to_string()))?;
        let _ = send.finish();
        let body = match casty_transport::read_frame(&mut recv).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(self.lost("the node closed the deploy's stream".into())),
            Err(e) => return Err(self.lost(e.to_string())),
        };
        let (_, response) =
            protocol::decode_body::<Response>(&body).map_err(|(_, e)| ClientError::Decode(e.to_string()))?;
        Ok(response)
    }

    /// The error for a request the connection could not carry. quinn's stream errors say
    /// only "connection lost"; the connection's close reason says why (a node that refused
    /// the client's certificate, say), so it wins when there is one.
    fn lost(&self, fallback: String) -> ClientError {
        let reason = self.connection.close_reason().map(|r| r.to_string());
        ClientError::ConnectionLost(reason.unwrap_or(fallback))
    }
}

/// Routes each response on a stream to the request that waits for it. When the stream
/// ends, every request still waiting sees its channel closed.
async fn read_responses(mut recv: quinn::RecvStream, pending: Pending) {
    loop {
        let body = match casty_transport::read_frame(&mut recv).await {
            Ok(Some(body)) => body,
            Ok(None) | Err(_) => break,
        };
        let Ok((id, response)) = protocol::decode_body::<Response>(&body) else { break };
        if let Some(waiter) = pending.lock().expect("pending lock").remove(&id) {
            let _ = waiter.send(response);
        }
    }
    pending.lock().expect("pending lock").clear();
}

fn status_of(response: Response) -> Result<StatusReport, ClientError> {
    match response {
        Response::Status(report) => Ok(report),
        Response::Error(e) => Err(e.into()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Decode(format!("the node answered with an unexpected message: {response:?}"))
}

impl Backend for Remote {
    fn invoke(&self, request: Invoke) -> BoxFuture<'_, Result<Vec<u8>, ClientError>> {
        Box::pin(async move {
            let timeout = Duration::from_millis(request.timeout_ms);
            // Where it goes is worked out once, from its shard (none for an address the
            // node will refuse), and the request itself moves into the frame uncopied.
            let shard = request.address.validate().is_ok().then(|| request.address.shard_key());
            let request = Request::Invoke(request);
            retrying(timeout, || async {
                match self.send_invoke(shard.as_ref(), &request).await? {
                    Response::Reply(bytes) => Ok(bytes),
                    Response::Error(e) => Err(e.into()),
                    other => Err(unexpected(other)),
                }
            })
            .await
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<StatusReport, ClientError>> {
        Box::pin(async move { status_of(self.request(&Request::Status).await?) })
    }

    fn member_status<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<StatusReport, ClientError>> {
        Box::pin(async move {
            let addr: SocketAddr = address.parse().map_err(|e| ClientError::Connect {
                addr: address.to_owned(),
                reason: format!("the member's address does not parse: {e}"),
            })?;
            let conn = self.direct(addr, self.connect_timeout).await?;
            status_of(conn.request(&Request::Status).await?)
        })
    }

    fn deploy<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<DeployReport, ClientError>> {
        Box::pin(async move {
            let conn = self.connection().await?;
            match conn.deploy_on_own_stream(Request::Deploy, deployment).await? {
                Response::Deployed(report) => Ok(report),
                Response::Error(e) => Err(e.into()),
                other => Err(unexpected(other)),
            }
        })
    }

    fn types(&self) -> BoxFuture<'_, Result<Vec<TypeInfo>, ClientError>> {
        Box::pin(async move {
            match self.request(&Request::Types).await? {
                Response::Types(types) => Ok(types),
                Response::Error(e) => Err(e.into()),
                other => Err(unexpected(other)),
            }
        })
    }

    fn client_id(&self) -> &str {
        self.ids.client_id()
    }

    fn next_request_id(&self) -> String {
        self.ids.next()
    }
}
