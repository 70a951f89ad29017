//! A shallow clone of one ref on the server. A deploy key reaches `ssh`
//! through an agent fed on stdin, and a token reaches git's credential
//! helper through stdin too: neither is ever on a command line or on the
//! server's disk.

use std::time::Duration;

use berth_config::SecretString;
use berth_ssh::{Arg, ShellCommand};

use super::{On, OpError};

/// How the repository is reached.
pub enum Access {
    /// A public repository.
    Anonymous,
    /// A private key (OpenSSH or PEM) allowed to read the repository.
    DeployKey(SecretString),
    /// An HTTPS token (e.g. a GitHub account's), sent as the password.
    Token(SecretString),
}

/// What to clone.
pub struct Clone {
    pub url: Arg,
    /// A branch, tag or commit.
    pub reference: Arg,
    /// Emptied and filled with the checkout.
    pub dest: Arg,
    /// Git hosts' keys, trusted on first use and checked after that.
    pub known_hosts: Arg,
    pub access: Access,
}

/// Fixed text, run with the working directory ready: fetch the one ref
/// (depth 1) and check it out. `$1` is the ref. The agent or the token
/// helper reads its secret from stdin.
#[cfg(test)]
const FETCH: &str =
    "git fetch -q --depth 1 origin \"$1\" && git checkout -q FETCH_HEAD && git rev-parse HEAD";

/// Clones and returns the commit checked out.
pub async fn clone(on: &On<'_>, spec: &Clone, deadline: Duration) -> Result<String, OpError> {
    let prepare = ShellCommand::new("set -e; rm -rf --")
        .arg(&spec.dest)
        .raw("; mkdir -p --")
        .arg(&spec.dest)
        .raw("; cd --")
        .arg(&spec.dest)
        .raw("; git init -q; git remote add origin")
        .arg(&spec.url)
        .raw("; export GIT_TERMINAL_PROMPT=0;")
        .set_var("BERTH_KNOWN_HOSTS", &spec.known_hosts)
        .raw("; export BERTH_KNOWN_HOSTS;");
    // The known-hosts path is read by the ssh that git starts, in double
    // quotes, so a path with spaces stays one word.
    let ssh = "export GIT_SSH_COMMAND='ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=\"$BERTH_KNOWN_HOSTS\"';";
    let output = match &spec.access {
        Access::Anonymous => {
            let command = prepare
                .raw(ssh)
                .raw("sh -c")
                .raw(QUOTED_FETCH)
                .raw("fetch")
                .arg(&spec.reference);
            on.run("git clone", &command, deadline).await?
        }
        Access::DeployKey(key) => {
            let command = prepare
                .raw(ssh)
                .raw("ssh-agent sh -c")
                .raw(QUOTED_AGENT_FETCH)
                .raw("fetch")
                .arg(&spec.reference);
            on.run_with_input("git clone", &command, key, deadline)
                .await?
        }
        Access::Token(token) => {
            let command = prepare
                // The token comes without a newline: `read` then answers 1
                // (end of input) with the value read, which `set -e` must
                // not take for a failure.
                .raw("IFS= read -r BERTH_TOKEN || [ -n \"$BERTH_TOKEN\" ]; export BERTH_TOKEN;")
                .raw("git config credential.helper '!f() { echo username=x-access-token; echo \"password=$BERTH_TOKEN\"; }; f';")
                .raw("sh -c")
                .raw(QUOTED_FETCH)
                .raw("fetch")
                .arg(&spec.reference);
            on.run_with_input("git clone", &command, token, deadline)
                .await?
        }
    };
    let commit = output.stdout.lines().last().unwrap_or("").trim().to_owned();
    if commit.len() < 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OpError::Unreadable {
            what: "git clone",
            detail: format!("no commit in its answer: {:?}", output.stdout),
        });
    }
    Ok(commit)
}

/// [`FETCH`] in single quotes, for `sh -c`.
const QUOTED_FETCH: &str =
    "'git fetch -q --depth 1 origin \"$1\" && git checkout -q FETCH_HEAD && git rev-parse HEAD'";

/// The key is read from stdin into an agent that lives as long as the fetch.
const QUOTED_AGENT_FETCH: &str = "'ssh-add -q - 2>/dev/null || { echo \"the deploy key was refused by ssh-add\" >&2; exit 90; }; git fetch -q --depth 1 origin \"$1\" && git checkout -q FETCH_HEAD && git rev-parse HEAD'";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quoted_scripts_are_the_fetch() {
        assert_eq!(QUOTED_FETCH, format!("'{FETCH}'"));
        assert!(QUOTED_AGENT_FETCH.ends_with(&format!("{FETCH}'")));
    }
}
