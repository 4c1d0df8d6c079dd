//! Placeholder until the controller lands.
use crate::cli::RunArgs;

/// Runs the operator until SIGINT/SIGTERM.
pub async fn run_until_signal(_args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
