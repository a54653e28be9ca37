//! Admin calls over a backend whose cluster is still forming: a deploy is retried while
//! the cluster is unavailable, and `wait_ready` returns only once the metadata group and
//! every partition (as the members report them together) have a leader.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use casty_client::{
    Backend, BoxFuture, ClientError, DeployReport, Deployment, Distributed, ErrorKind, Invoke, StatusReport,
    TypeInfo, WireError,
};
use casty_core::protocol::{GroupReport, Member, MemberState};

/// A cluster of members `a` and `b` over two partitions: `a` answers, and replicates
/// partition 0; `b` replicates partition 1. Each status call moves the cluster one step
/// through `stages`; deploys and type listings are refused `Unavailable` `refusals` times.
struct Forming {
    stages: Mutex<Vec<Stage>>,
    /// The stage the last status call showed, which the members' reports agree with.
    shown: Mutex<Option<Stage>>,
    refusals: AtomicU32,
    /// Deploys and type listings asked for.
    calls: AtomicU32,
}

#[derive(Clone, Copy)]
struct Stage {
    metadata_leader: bool,
    b_up: bool,
    b_leads_partition_1: bool,
}

impl Forming {
    fn new(stages: Vec<Stage>, refusals: u32) -> Self {
        Self {
            stages: Mutex::new(stages),
            shown: Mutex::new(None),
            refusals: AtomicU32::new(refusals),
            calls: AtomicU32::new(0),
        }
    }

    /// `Unavailable` while refusals are left.
    fn refuse(&self) -> Result<(), ClientError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match self.refusals.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)) {
            Ok(_) => {
                Err(WireError::new(ErrorKind::Unavailable, "the cluster is electing its metadata leader")
                    .into())
            }
            Err(_) => Ok(()),
        }
    }

    /// The next stage (the last one stays), as the answering node shows it.
    fn next_stage(&self) -> Stage {
        let mut stages = self.stages.lock().unwrap();
        let stage = if stages.len() > 1 { stages.remove(0) } else { stages[0] };
        *self.shown.lock().unwrap() = Some(stage);
        stage
    }

    fn report(node: &str, stage: Stage, group: GroupReport) -> StatusReport {
        let member = |id: &str, address: &str, up: bool| Member {
            node_id: id.into(),
            address: address.into(),
            state: if up { MemberState::Up } else { MemberState::Down },
            leads: 0,
        };
        StatusReport {
            cluster: "test".into(),
            node_id: node.into(),
            metadata_leader: stage.metadata_leader.then(|| "a".to_owned()),
            members: vec![member("a", "127.0.0.1:1", true), member("b", "127.0.0.1:2", stage.b_up)],
            partitions: 2,
            entity_types: Vec::new(),
            live_instances: 0,
            groups: vec![group],
        }
    }
}

fn group(partition: u32, leader: Option<&str>) -> GroupReport {
    GroupReport { partition, leader: leader.map(str::to_owned), replicas: Vec::new(), lag: Vec::new() }
}

impl Backend for Forming {
    fn invoke(&self, _: Invoke) -> BoxFuture<'_, Result<Vec<u8>, ClientError>> {
        unreachable!("no commands in these tests")
    }
    fn status(&self) -> BoxFuture<'_, Result<StatusReport, ClientError>> {
        let stage = self.next_stage();
        Box::pin(async move { Ok(Self::report("a", stage, group(0, Some("a")))) })
    }
    fn member_status<'a>(&'a self, address: &'a str) -> BoxFuture<'a, Result<StatusReport, ClientError>> {
        assert_eq!(address, "127.0.0.1:2", "only b is asked");
        let stage = self.shown.lock().unwrap().expect("b is asked after a status");
        let leader = stage.b_leads_partition_1.then_some("b");
        Box::pin(async move { Ok(Self::report("b", stage, group(1, leader))) })
    }
    fn deploy<'a>(&'a self, deployment: &'a Deployment) -> BoxFuture<'a, Result<DeployReport, ClientError>> {
        let refused = self.refuse();
        Box::pin(async move {
            refused?;
            Ok(DeployReport {
                entity_type: deployment.entity_type.clone(),
                version: 1,
                digest: String::new(),
                unchanged: false,
                pending: Vec::new(),
            })
        })
    }
    fn types(&self) -> BoxFuture<'_, Result<Vec<TypeInfo>, ClientError>> {
        let refused = self.refuse();
        Box::pin(async move { refused.map(|()| Vec::new()) })
    }
    fn client_id(&self) -> &str {
        "forming"
    }
    fn next_request_id(&self) -> String {
        unreachable!("admin calls carry no request id")
    }
}

const READY: Stage = Stage { metadata_leader: true, b_up: true, b_leads_partition_1: true };

fn deployment() -> Deployment {
    Deployment { entity_type: "t".into(), wasm: vec![0; 8], memory_max_bytes: None, call_deadline_ms: None }
}

#[tokio::test(start_paused = true)]
async fn a_deploy_is_retried_while_the_cluster_is_unavailable() {
    let backend = Arc::new(Forming::new(vec![READY], 3));
    let report = Distributed::new(backend.clone()).deploy_with(deployment()).await.unwrap();
    assert_eq!(report.version, 1);
    assert_eq!(backend.calls.load(Ordering::Relaxed), 4, "three refusals, then the deploy");
}

#[tokio::test(start_paused = true)]
async fn listing_types_is_retried_while_the_cluster_is_unavailable() {
    let backend = Arc::new(Forming::new(vec![READY], 2));
    assert!(Distributed::new(backend.clone()).types().await.unwrap().is_empty());
    assert_eq!(backend.calls.load(Ordering::Relaxed), 3, "two refusals, then the list");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_gives_the_clusters_reason_when_its_timeout_passes() {
    let backend = Arc::new(Forming::new(vec![READY], u32::MAX));
    let admin = Distributed::new(backend).admin().timeout(Duration::from_secs(2));
    let error = admin.deploy_with(deployment()).await.unwrap_err();
    assert_eq!(error.kind(), Some(&ErrorKind::Unavailable), "{error}");
    assert!(error.to_string().contains("electing its metadata leader"), "{error}");
}

#[tokio::test(start_paused = true)]
async fn wait_ready_returns_once_the_metadata_group_and_every_partition_have_a_leader() {
    let stages = vec![
        Stage { metadata_leader: false, b_up: false, b_leads_partition_1: false },
        Stage { metadata_leader: true, b_up: false, b_leads_partition_1: false },
        Stage { metadata_leader: true, b_up: true, b_leads_partition_1: false },
        READY,
    ];
    let backend = Arc::new(Forming::new(stages, 0));
    let report = Distributed::new(backend.clone()).admin().wait_ready(2).await.unwrap();
    assert!(report.metadata_leader.is_some());
    assert_eq!(report.members.iter().filter(|m| m.state == MemberState::Up).count(), 2);
    assert_eq!(backend.stages.lock().unwrap().len(), 1, "it waited through every stage");
    assert!(backend.shown.lock().unwrap().unwrap().b_leads_partition_1, "it returned at the ready stage");
}

#[tokio::test(start_paused = true)]
async fn wait_ready_says_what_the_cluster_lacks_when_its_timeout_passes() {
    let stuck = Stage { metadata_leader: true, b_up: true, b_leads_partition_1: false };
    let admin = Distributed::new(Arc::new(Forming::new(vec![stuck], 0))).admin();
    let error = admin.timeout(Duration::from_secs(1)).wait_ready(2).await.unwrap_err();
    assert!(matches!(error, ClientError::NotReady { timeout_ms: 1000, .. }), "{error:?}");
    assert!(error.to_string().ends_with("partition 1 has no leader yet"), "{error}");

    let two_members = Stage { metadata_leader: true, b_up: true, b_leads_partition_1: true };
    let admin = Distributed::new(Arc::new(Forming::new(vec![two_members], 0))).admin();
    let error = admin.timeout(Duration::from_secs(1)).wait_ready(3).await.unwrap_err();
    assert!(error.to_string().ends_with("2 of the 3 members wanted are up"), "{error}");
}
