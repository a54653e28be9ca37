//! The seed scenario: every structure of the original Python example, in Rust.
//!
//! `cargo run --example seed` runs it against a node embedded in this process (as
//! `ClusteredActorSystem` does); `cargo run --example seed -- 127.0.0.1:25520` runs it
//! against a running cluster. Each line shows a call and what it returned.

use casty_client::{ClientError, Distributed};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) email: String,
}

/// Runs the scenario; returns one line per call, `call => result`.
pub(crate) async fn scenario(d: &Distributed) -> Result<Vec<String>, ClientError> {
    let mut out = Vec::new();
    let mut show = |call: &str, result: String| out.push(format!("{call} => {result}"));

    // Counter
    let views = d.counter("page-views").shards(50);
    views.increment(100).await?;
    views.decrement(10).await?;
    show("views.get()", views.get().await?.to_string());

    // Map: one key per entry, spread over the shards
    let users = d.map::<String, User>("users").shards(50);
    users.put(&"alice".into(), &User { name: "Alice".into(), email: "alice@example.com".into() }).await?;
    show("users.get(alice)", format!("{:?}", users.get(&"alice".into()).await?));
    show("users.contains(alice)", users.contains(&"alice".into()).await?.to_string());
    show("users.delete(alice)", users.delete(&"alice".into()).await?.to_string());

    // Set
    let tags = d.set::<String>("active-tags").shards(50);
    show("tags.add(python)", tags.add(&"python".into()).await?.to_string());
    show("tags.add(python)", tags.add(&"python".into()).await?.to_string());
    show("tags.size()", tags.size().await?.to_string());

    // Queue (FIFO)
    let jobs = d.queue::<String>("work-queue").shards(50);
    jobs.enqueue(&"task-1".into()).await?;
    show("jobs.peek()", format!("{:?}", jobs.peek().await?));
    show("jobs.dequeue()", format!("{:?}", jobs.dequeue().await?));
    show("jobs.dequeue()", format!("{:?}", jobs.dequeue().await?));

    // Lock: acquire blocks until granted; the token fences writes made under it
    let lock = d.lock("deploy-lock").shards(10);
    show("lock.acquire()", format!("token {}", lock.acquire().await?));
    show("lock.release()", lock.release().await?.to_string());
    show("lock.try_acquire()", lock.try_acquire().await?.is_some().to_string());
    lock.release().await?;

    // Semaphore: bounded concurrency
    let pool = d.semaphore("db-pool", 5).shards(10);
    show("sem.acquire()", format!("token {}", pool.acquire().await?));
    show("sem.release()", pool.release().await?.to_string());

    // Barrier: three parties, released together
    let arrivals: Vec<_> = (1..=3)
        .map(|n| {
            let barrier = d.barrier("phase-1").party(format!("node-{n}"));
            tokio::spawn(async move { barrier.arrive(3).await })
        })
        .collect();
    for arrival in arrivals {
        let round = arrival.await.map_err(|e| ClientError::ConnectionLost(e.to_string()))??;
        show("barrier.arrive(expected=3)", format!("round {round}"));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let lines = match std::env::args().nth(1) {
        Some(addr) => scenario(&casty_client::Client::connect([addr]).await?.distributed()).await?,
        None => {
            let node =
                casty_node::Node::builder().name("my-app").bind("127.0.0.1:0".parse()?).start().await?;
            let lines = scenario(&node.distributed()).await?;
            node.shutdown().await;
            lines
        }
    };
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
