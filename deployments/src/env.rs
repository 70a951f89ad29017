//! The env file a release's container starts with (`docker run
//! --env-file`, written over SFTP with mode 0600): one `NAME=value` per
//! line, taken literally by docker (no quotes, no expansion), so a value
//! needs no escaping; names were checked and values are one line
//! ([`crate::spec`]). `PORT` tells the app where to listen unless the user
//! set it.

use std::collections::BTreeMap;

pub fn render(env: &BTreeMap<String, String>, port: u16) -> String {
    let mut file = String::new();
    if !env.contains_key("PORT") {
        file.push_str(&format!("PORT={port}\n"));
    }
    for (name, value) in env {
        file.push_str(name);
        file.push('=');
        file.push_str(value);
        file.push('\n');
    }
    file
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_literal_line_per_variable() {
        let env = BTreeMap::from([
            (
                "DATABASE_URL".to_owned(),
                "postgres://u:p@db/app?x=1 y".to_owned(),
            ),
            ("QUOTED".to_owned(), "\"$HOME\" 'x'".to_owned()),
        ]);
        assert_eq!(
            render(&env, 3000),
            "PORT=3000\nDATABASE_URL=postgres://u:p@db/app?x=1 y\nQUOTED=\"$HOME\" 'x'\n"
        );
        let own_port = BTreeMap::from([("PORT".to_owned(), "8080".to_owned())]);
        assert_eq!(render(&own_port, 3000), "PORT=8080\n");
    }
}
