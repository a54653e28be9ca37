//! The cluster's administration: its status, whether it is ready, its entity types and
//! deploys. Every call retries what a retry can mend (a cluster still electing its
//! leaders, a lost connection) within its timeout, as commands do.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use casty_core::limits::{CLIENT_TIMEOUT_DEFAULT_MS, COMPONENT_SIZE_MAX_BYTES, DEPLOY_TIMEOUT_DEFAULT_MS};
use casty_core::protocol::{DeployReport, Deployment, MemberState, StatusReport, TypeInfo};

use crate::retry::retrying;
use crate::{Backend, ClientError, Zero, duration_ms};

/// How often [`Admin::wait_ready`] looks at the cluster again.
const READY_POLL: Duration = Duration::from_millis(100);

/// The cluster's administration: `client.admin().timeout(..).status()`.
#[derive(Clone)]
pub struct Admin {
    backend: Arc<dyn Backend>,
    timeout: Option<Duration>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").field("timeout", &self.timeout).finish()
    }
}

impl Admin {
    pub(crate) fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend, timeout: None }
    }

    /// How long each call may take, retries included. Default: 5 s; 60 s for a deploy,
    /// which compiles the component on every node.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn timeout_or(&self, default_ms: u64) -> Result<Duration, ClientError> {
        let timeout = self.timeout.unwrap_or(Duration::from_millis(default_ms));
        duration_ms("the timeout", timeout, Zero::Refused)?;
        Ok(timeout)
    }

    /// Describes the node answering and its cluster.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        retrying(self.timeout_or(CLIENT_TIMEOUT_DEFAULT_MS)?, || self.backend.status()).await
    }

    /// Every entity type the cluster runs, with each version.
    pub async fn types(&self) -> Result<Vec<TypeInfo>, ClientError> {
        retrying(self.timeout_or(CLIENT_TIMEOUT_DEFAULT_MS)?, || self.backend.types()).await
    }

    /// Deploys a component to the whole cluster; see [`crate::Distributed::deploy_with`].
    pub async fn deploy_with(&self, deployment: Deployment) -> Result<DeployReport, ClientError> {
        if deployment.wasm.len() > COMPONENT_SIZE_MAX_BYTES {
            return Err(ClientError::InvalidArgument(format!(
                "the component is {} bytes; the limit is {COMPONENT_SIZE_MAX_BYTES} bytes",
                deployment.wasm.len()
            )));
        }
        let timeout = self.timeout_or(DEPLOY_TIMEOUT_DEFAULT_MS)?;
        retrying(timeout, || self.backend.deploy(&deployment)).await
    }

    /// Waits, within the timeout, until the cluster is ready: its metadata group and
    /// every partition have a leader, and at least `members` members are up (0: any
    /// number). Returns the status of the node answering; or, when time runs out, what
    /// the cluster still lacked.
    pub async fn wait_ready(&self, members: usize) -> Result<StatusReport, ClientError> {
        let timeout = self.timeout_or(CLIENT_TIMEOUT_DEFAULT_MS)?;
        let deadline = Instant::now() + timeout;
        let mut lacking = "no node answered".to_owned();
        loop {
            match tokio::time::timeout_at(deadline, self.survey()).await {
                Ok(Ok(reports)) => match unready(&reports, members) {
                    None => return Ok(reports.into_iter().next().expect("a survey has the answering node")),
                    Some(why) => lacking = why,
                },
                Ok(Err(e)) => lacking = e.to_string(),
                Err(_) => {}
            }
            if Instant::now() + READY_POLL >= deadline {
                let timeout_ms = timeout.as_millis() as u64;
                return Err(ClientError::NotReady { timeout_ms, lacking });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The status of the node answering, then of every other member it sees up (a node
    /// reports only the partitions it replicates). A member that does not answer is left
    /// out: the partitions only it reports then count as leaderless.
    async fn survey(&self) -> Result<Vec<StatusReport>, ClientError> {
        let first = self.backend.status().await?;
        let mut reports = Vec::with_capacity(first.members.len());
        for member in &first.members {
            if member.state == MemberState::Up
                && member.node_id != first.node_id
                && let Ok(report) = self.backend.member_status(&member.address).await
            {
                reports.push(report);
            }
        }
        reports.insert(0, first);
        Ok(reports)
    }
}

/// What keeps the cluster the `reports` describe (the answering node's first) from being
/// ready, or `None` when it is ready.
pub(crate) fn unready(reports: &[StatusReport], members: usize) -> Option<String> {
    let first = reports.first()?;
    if first.metadata_leader.is_none() {
        return Some("the metadata group has no leader yet".into());
    }
    let up = first.members.iter().filter(|m| m.state == MemberState::Up).count();
    if up < members {
        return Some(format!("{up} of the {members} members wanted are up"));
    }
    let led = |partition: u32| {
        reports.iter().flat_map(|r| &r.groups).any(|g| g.partition == partition && g.leader.is_some())
    };
    let leaderless: Vec<u32> = (0..first.partitions).filter(|p| !led(*p)).collect();
    match leaderless.as_slice() {
        [] => None,
        [one] => Some(format!("partition {one} has no leader yet")),
        [first, ..] => {
            Some(format!("{} partitions have no leader yet (the first: {first})", leaderless.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use casty_core::protocol::{GroupReport, Member};

    fn report(node: &str, leaders: &[(u32, Option<&str>)]) -> StatusReport {
        let member = |id: &str, state| Member { node_id: id.into(), address: String::new(), state, leads: 0 };
        StatusReport {
            cluster: "c".into(),
            node_id: node.into(),
            metadata_leader: Some("a".into()),
            members: vec![
                member("a", MemberState::Up),
                member("b", MemberState::Up),
                member("c", MemberState::Down),
            ],
            partitions: 4,
            entity_types: Vec::new(),
            live_instances: 0,
            groups: leaders
                .iter()
                .map(|(partition, leader)| GroupReport {
                    partition: *partition,
                    leader: leader.map(str::to_owned),
                    replicas: Vec::new(),
                    lag: Vec::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn ready_when_the_members_together_report_a_leader_for_every_partition() {
        let a = report("a", &[(0, Some("a")), (1, None), (2, Some("b"))]);
        let b = report("b", &[(1, Some("b")), (3, Some("b"))]);
        assert_eq!(unready(&[a.clone(), b.clone()], 2), None);
        assert_eq!(
            unready(std::slice::from_ref(&a), 0).unwrap(),
            "2 partitions have no leader yet (the first: 1)"
        );
        let b = report("b", &[(1, Some("b"))]);
        assert_eq!(unready(&[a, b], 0).unwrap(), "partition 3 has no leader yet");
    }

    #[test]
    fn not_ready_without_a_metadata_leader_or_enough_members() {
        let all = [(0, Some("a")), (1, Some("a")), (2, Some("a")), (3, Some("a"))];
        let ready = report("a", &all);
        assert_eq!(unready(std::slice::from_ref(&ready), 2), None);
        assert_eq!(unready(std::slice::from_ref(&ready), 3).unwrap(), "2 of the 3 members wanted are up");
        let electing = StatusReport { metadata_leader: None, ..ready };
        assert_eq!(unready(&[electing], 0).unwrap(), "the metadata group has no leader yet");
    }
}
