//! TODO: nodes (being written).

use std::sync::Arc;

use super::AgentConfig;

pub async fn run(_client: kube::Client, _cfg: Arc<AgentConfig>) -> anyhow::Result<()> {
    std::future::pending::<()>().await;
    Ok(())
}
