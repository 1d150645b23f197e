//! `tandem serve`: wire the node, its workers and the admin listener, and
//! run until shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Role};
use crate::engine::Gate;
use crate::node::{Node, NodeError, delivery, watch};
use crate::shutdown::{Listener, Shutdown};

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    ListenFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("failover: {0}")]
    Failover(#[from] crate::store::StoreError),
    #[error(transparent)]
    Watch(#[from] watch::WatchError),
    #[error("cluster: {0}")]
    Cluster(crate::cluster::ClusterError),
    #[error("the admin server failed: {0}")]
    Http(std::io::Error),
}

/// How often old event log rows and notifications are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Run a node until `stop` resolves. `on_ready` gets the node and its
/// failover handle (pair members) once it listens (benches use it; the CLI
/// passes a no-op).
pub async fn run(
    config: Config,
    stop: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Arc<Node>, Option<&crate::failover::Handle>),
) -> Result<(), ServeError> {
    // A standalone node's gate is always open; a pair member's starts
    // closed and failover opens it. Opening the store is blocking work:
    // keep it off the executor.
    let standalone = config.role == Role::Standalone;
    let node = tokio::task::spawn_blocking(move || Node::open(config, Gate::new(standalone)))
        .await
        .map_err(|e| NodeError::Task(e.to_string()))??;
    let (shutdown, listener) = Shutdown::new();
    let mut tasks = tokio::task::JoinSet::new();

    let rules_synced_here = node
        .config()
        .failover
        .as_ref()
        .is_some_and(|f| f.synced_here("rule"));
    if rules_synced_here && node.config().rules.dir.is_some() {
        tracing::warn!(
            "rules are synced from the primary: the rules directory is not watched on this secondary"
        );
    }
    if let Some(dir) = node
        .config()
        .rules
        .dir
        .clone()
        .filter(|_| !rules_synced_here)
    {
        // The directory is created, watched, then scanned once, all before
        // the listener opens.
        let w = watch::Watch::start(node.clone(), dir).await?;
        tasks.spawn(w.run(listener.clone().wait()));
    }
    let summary = node.reload().await?;
    tracing::info!(
        rules = summary.loaded.len(),
        errors = summary.errors.len(),
        "rules loaded"
    );

    let addr = node.config().admin.listen;
    let tcp = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = tcp
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    node.set_admin_url(format!("http://{bound}"));

    let mut failover = None;
    let mut link = None;
    if let Some(fo) = node.config().failover.clone() {
        let link_listener = match fo.listen {
            Some(addr) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?;
                link = l.local_addr().ok();
                Some(l)
            }
            None => None,
        };
        let (handle, task) =
            crate::failover::peer::start(node.clone(), fo, link_listener, listener.clone()).await?;
        tasks.spawn(async move {
            let _ = task.await;
        });
        tasks.spawn(crate::sync::triggers::run_triggers(
            node.clone(),
            handle.clone(),
            listener.clone(),
        ));
        failover = Some(handle);
    }
    let mut cluster = None;
    if node.config().cluster.is_some() {
        let (handle, cluster_tasks) = crate::cluster::run(node.clone(), listener.clone())
            .await
            .map_err(ServeError::Cluster)?;
        for t in cluster_tasks {
            tasks.spawn(async move {
                let _ = t.await;
            });
        }
        cluster = Some(handle);
    }
    write_listen_file(&node, bound, link)?;
    tracing::info!(node = %node.config().node.name, role = node.config().role.as_str(), admin = %bound, "tandem is serving");

    tasks.spawn(delivery::run(node.clone(), listener.clone().wait()));
    tasks.spawn(prune_loop(node.clone(), listener.clone()));
    tasks.spawn(crate::node::timer_loop(
        node.clone(),
        listener.clone().wait(),
    ));
    on_ready(&node, failover.as_ref());

    let app = crate::admin::app_with(node.clone(), failover, cluster);
    let admin = &node.config().admin;
    let limits = crate::net::ServeLimits {
        header_timeout: admin.header_timeout,
        request_timeout: admin.request_timeout,
        idle_timeout: admin.idle_timeout,
        max_connections: admin.max_connections,
        upload_path: Some(crate::sync::receive::PATH),
    };
    let metrics = node.clone();
    crate::net::serve(
        tcp,
        app,
        limits,
        move |reason| {
            metrics
                .metrics()
                .admin_connections_refused
                .get_or_create(&crate::metrics::Reason { reason })
                .inc();
        },
        stop,
    )
    .await;
    let result: Result<(), ServeError> = Ok(());
    shutdown.fire();
    while tasks.join_next().await.is_some() {}
    tracing::info!("tandem stopped");
    result
}

fn write_listen_file(
    node: &Node,
    admin: SocketAddr,
    link: Option<SocketAddr>,
) -> Result<(), ServeError> {
    let path = node.config().node.data_dir.join("listen.json");
    let body = serde_json::json!({"admin": admin.to_string(), "link": link.map(|l| l.to_string())});
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, body.to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| ServeError::ListenFile { path, source })
}

async fn prune_loop(node: Arc<Node>, stop: Listener) {
    let stop = stop.wait();
    tokio::pin!(stop);
    loop {
        match node.prune().await {
            Ok((events, notes)) if events + notes > 0 => {
                tracing::info!(
                    events,
                    notifications = notes,
                    "pruned rows past the retention"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::error!("prune: {e}"),
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}
