//! The arguments every subcommand shares (`--config`, `--data-dir`) and how they load the
//! configuration. A leaf of `cli`: the subcommands implemented elsewhere (`archive/cmd.rs`)
//! take it from here, and `cli/mod.rs` dispatches to them.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::config::{Config, Overrides};

#[derive(Args, Debug, Default, Clone)]
pub struct CommonArgs {
    /// TOML config file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory [default: ./tracegate-data].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl CommonArgs {
    pub fn load(&self) -> Result<Config> {
        let o = Overrides {
            data_dir: self.data_dir.clone(),
            ..Default::default()
        };
        Ok(Config::load(self.config.as_deref(), &o)?)
    }
}
