//! Man pages and shell completions generated from a binary's clap
//! definition. Every gatepass binary answers a hidden `__docs DIR` by
//! calling [`write`]; the packages ship what it writes.

use std::io::Write;
use std::path::Path;

/// Writes `DIR/man/<name>.1` (and one page per subcommand,
/// `<name>-<sub>.1`) and `DIR/completions/{<name>.bash,_<name>,<name>.fish}`.
pub fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let name = cmd.get_name().to_string();
    let man = dir.join("man");
    let comp = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&comp)?;
    let mut cmd = cmd;
    cmd.build();
    write_man(&cmd, &name, &man)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let sub_name = format!("{name}-{}", sub.get_name());
        write_man(&sub.clone().name(sub_name.clone()), &sub_name, &man)?;
    }
    use clap_complete::{generate, Shell};
    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut out = Vec::new();
        generate(shell, &mut cmd, name.clone(), &mut out);
        std::fs::File::create(comp.join(file))?.write_all(&out)?;
    }
    Ok(())
}

fn write_man(cmd: &clap::Command, name: &str, dir: &Path) -> std::io::Result<()> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    std::fs::write(dir.join(format!("{name}.1")), out)
}
