//! `chat-operator`: thin entry point; everything lives in the library.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;

use chat_operator::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => print!(
            "{}",
            chat_operator::crd::crd_yaml().context("rendering the CRD")?
        ),
        Command::Rbac => print!(
            "{}",
            chat_operator::rbac::cluster_role_yaml().context("rendering the ClusterRole")?
        ),
        Command::AdmissionPolicy => print!(
            "{}",
            chat_operator::admission::policy::policy_yaml()
                .context("rendering the ValidatingAdmissionPolicy")?
        ),
        Command::Run(args) => {
            chat_operator::telemetry::init_logging(args.log_format);
            let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
            runtime.block_on(chat_operator::run::run_until_signal(args))?;
        }
    }
    Ok(())
}
