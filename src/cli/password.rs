//! Where the password of an encrypted repository comes from: the global
//! `--password-file` and `--password-command` options, `STRATA_PASSWORD`,
//! or the terminal, in that order. The library asks only when the
//! repository is encrypted, once per open.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use strata::error::Error;
use strata::keys::{Password, PasswordSource};

/// The password options of the command line.
#[derive(Debug, Clone, Default)]
pub struct PasswordOptions {
    pub file: Option<PathBuf>,
    pub command: Option<String>,
}

static OPTIONS: OnceLock<PasswordOptions> = OnceLock::new();

/// Records the command line's password options for [`source`].
pub fn install(options: PasswordOptions) {
    let _ = OPTIONS.set(options);
}

/// The password source every command opens repositories with.
pub fn source() -> Arc<dyn PasswordSource> {
    Arc::new(OPTIONS.get().cloned().unwrap_or_default())
}

const HOW: &str = "give it with STRATA_PASSWORD, --password-file FILE or --password-command CMD";

impl PasswordSource for PasswordOptions {
    fn password(&self, location: &str) -> strata::Result<Password> {
        let required = |detail: String| Error::PasswordRequired {
            repository: location.to_string(),
            detail,
        };
        if let Some(file) = &self.file {
            return read_password_file(file).map_err(|e| required(format!("{e:#}")));
        }
        if let Some(command) = &self.command {
            return run_password_command(command).map_err(|e| required(format!("{e:#}")));
        }
        if let Some(password) = std::env::var_os("STRATA_PASSWORD") {
            return Ok(Password::new(
                std::os::unix::ffi::OsStringExt::into_vec(password),
            ));
        }
        prompt(&format!("password for {location}: "))
            .map_err(|e| required(format!("no password was given ({HOW}): {e:#}")))
    }
}

/// A file's content without one trailing newline.
pub fn read_password_file(path: &Path) -> Result<Password> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .with_context(|| format!("reading password file {}", path.display()))?;
    Ok(Password::new(without_newline(bytes)))
}

/// Runs `command` (split like a shell would, but run without one) and
/// takes its standard output.
fn run_password_command(command: &str) -> Result<Password> {
    let argv = shlex::split(command)
        .filter(|argv| !argv.is_empty())
        .with_context(|| format!("password command {command:?} is not a valid command line"))?;
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running password command {:?}", argv[0]))?;
    if !output.status.success() {
        bail!("password command {:?} failed with {}", argv[0], output.status);
    }
    Ok(Password::new(without_newline(output.stdout)))
}

fn without_newline(mut bytes: Vec<u8>) -> Vec<u8> {
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    bytes
}

/// Asks on the controlling terminal (never on standard input, which may
/// carry data), without echo.
fn prompt(text: &str) -> Result<Password> {
    let answer = rpassword::prompt_password(text).context("cannot ask on a terminal")?;
    Ok(Password::new(answer.into_bytes()))
}

/// The password of a repository being created: from the usual sources,
/// asked twice on a terminal.
pub fn for_new_repository(location: &str) -> Result<Password> {
    let options = OPTIONS.get().cloned().unwrap_or_default();
    if options.file.is_some() || options.command.is_some() || std::env::var_os("STRATA_PASSWORD").is_some() {
        return Ok(options.password(location)?);
    }
    ask_twice(&format!("new password for {location}: "))
        .with_context(|| format!("no password was given for the new encrypted repository ({HOW})"))
}

/// A new password for `strata key add` or `passwd`: from `file`,
/// `STRATA_NEW_PASSWORD`, or asked twice on a terminal.
pub fn new_password(file: Option<&Path>) -> Result<Password> {
    if let Some(file) = file {
        return read_password_file(file);
    }
    if let Some(password) = std::env::var_os("STRATA_NEW_PASSWORD") {
        return Ok(Password::new(std::os::unix::ffi::OsStringExt::into_vec(
            password,
        )));
    }
    ask_twice("new password: ").context(
        "no new password was given (give it with --new-password-file FILE or STRATA_NEW_PASSWORD)",
    )
}

fn ask_twice(text: &str) -> Result<Password> {
    let first = prompt(text)?;
    let second = prompt("the same password again: ")?;
    if first.as_bytes() != second.as_bytes() {
        bail!("the two passwords differ");
    }
    Ok(first)
}
