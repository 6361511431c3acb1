//! `cargo xtask pipeline`: the whole loop end to end. Its steps land with the
//! stages they drive; until each binary works the command says so and exits 2.

use xshell::Shell;

use crate::flags;

impl flags::Pipeline {
    pub fn run(&self, _sh: &Shell) -> anyhow::Result<()> {
        eprintln!("cargo xtask pipeline: not built yet (the delivery issue completes it)");
        std::process::exit(2)
    }
}
