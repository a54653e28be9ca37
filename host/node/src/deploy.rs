//! Deploying entity types to a running cluster.
//!
//! The node a deployment reaches checks it: the component compiles, implements the
//! `casty:entity` world and imports nothing entities are not given; and, when it
//! upgrades a type, it can restore the state of that type's entities on this node. Only
//! then does the metadata leader number it (the type's next version) and commit it to
//! the metadata group, whose every member stores the component in its journal and
//! compiles it. The deploy answers once every member has it loaded.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use casty_core::limits::{COMPONENT_SIZE_MAX_BYTES, DEPLOY_SPREAD_WAIT_MS};
use casty_core::protocol::{DeployReport, Deployment, Request, Response, WireError};
use casty_core::record::TypeRecord;
use casty_runtime::EntityType;

use crate::cluster::{ask, unavailable};
use crate::dispatch::{Dispatcher, invalid};
use crate::partition::Message;
use crate::types::limits_of;

/// How often a deploy asks the members whether they loaded the new version.
const SPREAD_POLL: Duration = Duration::from_millis(20);

impl Dispatcher {
    /// Checks a deployment here, then has the metadata leader commit it.
    pub(crate) async fn deploy(&self, deployment: Deployment) -> Result<DeployReport, WireError> {
        let name = deployment.entity_type.clone();
        casty_core::routing::validate_type_name(&name).map_err(|e| invalid(e.to_string()))?;
        if self.types.is_fixed(&name) {
            return Err(invalid(format!(
                "{name:?} is a built-in entity type (or one given to a node with --entity); deploy yours under another name"
            )));
        }
        if deployment.wasm.len() > COMPONENT_SIZE_MAX_BYTES {
            return Err(invalid(format!(
                "the component is {} bytes; the limit is {COMPONENT_SIZE_MAX_BYTES} bytes",
                deployment.wasm.len()
            )));
        }
        let limits = limits_of(deployment.memory_max_bytes, deployment.call_deadline_ms);
        let wasm = Arc::new(deployment.wasm);
        let candidate =
            self.types.compile(&name, 0, wasm.clone(), limits).await.map_err(|e| invalid(e.to_string()))?;
        if let Some(current) = self.types.current(&name) {
            if same_type(&current, &candidate) {
                return Ok(unchanged(&current));
            }
            self.check_upgrade(&candidate).await?;
        }
        let deployment = Deployment { wasm: Arc::unwrap_or_clone(wasm), ..deployment };
        if self.leads_meta() {
            return self.commit_deploy(deployment).await;
        }
        match self.to_meta_leader(Request::CommitDeploy(deployment)).await {
            None => Err(unavailable("this node became the metadata leader meanwhile; retry".into())),
            Some(Ok(Response::Deployed(report))) => Ok(report),
            Some(Ok(other)) => Err(unavailable(format!("the metadata leader answered {other:?}"))),
            Some(Err(e)) => Err(e),
        }
    }

    /// Numbers a checked deployment and commits it to the metadata group (on its leader),
    /// then waits until every member has loaded it.
    pub(crate) async fn commit_deploy(&self, deployment: Deployment) -> Result<DeployReport, WireError> {
        if !self.leads_meta() {
            return Err(unavailable("this node no longer leads the metadata group; retry".into()));
        }
        let name = deployment.entity_type.clone();
        let digest = casty_runtime::digest(&deployment.wasm);
        let numbering = self.deploying.lock().await;
        let version = self.types.next_version(&name).map_err(invalid)?;
        let record = TypeRecord { version, deployment };
        let (answer, committed) = oneshot::channel();
        let meta = &self.mailboxes[self.partitions as usize];
        if meta.send(Message::Deploy(record, answer)).await.is_err() {
            return Err(unavailable("the node is shutting down".into()));
        }
        committed
            .await
            .map_err(|_| unavailable("the metadata group stopped before committing the deployment".into()))?
            .map_err(|e| {
                unavailable(format!("the deployment was not committed ({}); deploy again", e.message))
            })?;
        drop(numbering);
        tracing::info!(entity_type = %name, version, "deployment committed");
        let pending = self.wait_spread(&name, version).await;
        Ok(DeployReport { entity_type: name, version, digest, unchanged: false, pending })
    }

    /// Asks every partition here whether `candidate` can restore the state of its type's
    /// entities; the first that cannot refuses the deployment.
    async fn check_upgrade(&self, candidate: &Arc<EntityType>) -> Result<usize, WireError> {
        let mut answers = Vec::with_capacity(self.partitions as usize);
        for mailbox in &self.mailboxes[..self.partitions as usize] {
            let (answer, answered) = oneshot::channel();
            if mailbox.send(Message::CheckUpgrade(candidate.clone(), answer)).await.is_ok() {
                answers.push(answered);
            }
        }
        let mut checked = 0;
        for answered in answers {
            match answered.await {
                Ok(Ok(restored)) => checked += restored,
                Ok(Err(reason)) => {
                    return Err(invalid(format!(
                        "the new version of entity type {:?} cannot take over its entities' state, so it was not \
                         deployed and the current version keeps running: {reason}",
                        candidate.name()
                    )));
                }
                Err(_) => return Err(unavailable("a partition stopped while checking the upgrade".into())),
            }
        }
        tracing::info!(entity_type = candidate.name(), entities = checked, "upgrade checked");
        Ok(checked)
    }

    /// Waits until every member has loaded `version` of `name`, or the spread wait passed;
    /// returns the members that had not.
    async fn wait_spread(&self, name: &str, version: u32) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(DEPLOY_SPREAD_WAIT_MS);
        let mut pending = self.members();
        loop {
            let mut loaded = Vec::new();
            for (&id, member) in &pending {
                let types = if id == self.raft_id {
                    Ok(Response::Types(self.types.list()))
                } else {
                    ask(&self.peers, &member.addr, &Request::Types).await
                };
                if let Ok(Response::Types(types)) = types
                    && types.iter().any(|t| t.entity_type == name && t.version >= version)
                {
                    loaded.push(id);
                }
            }
            for id in loaded {
                pending.remove(&id);
            }
            if pending.is_empty() || tokio::time::Instant::now() >= deadline {
                return pending.into_values().map(|member| member.name).collect();
            }
            tokio::time::sleep(SPREAD_POLL).await;
        }
    }
}

/// Whether two loads are the same component under the same limits.
fn same_type(a: &EntityType, b: &EntityType) -> bool {
    a.digest() == b.digest()
        && a.memory_max_bytes() == b.memory_max_bytes()
        && a.call_deadline() == b.call_deadline()
}

fn unchanged(current: &EntityType) -> DeployReport {
    DeployReport {
        entity_type: current.name().to_owned(),
        version: current.version(),
        digest: current.digest().to_owned(),
        unchanged: true,
        pending: Vec::new(),
    }
}
