//! Rows per table: what a backup's snapshot held, and what its verifying
//! restore holds.

use std::collections::BTreeMap;

use sqlx::PgConnection;

/// Table name → rows, for every table of the `public` schema.
pub type TableRows = BTreeMap<String, i64>;

/// Counts every table in one statement (the count query of each built by
/// `format('%I')`, so a name is never spliced in by hand).
pub(crate) async fn count(conn: &mut PgConnection) -> Result<TableRows, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tablename::text, \
                (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM public.%I', tablename), \
                 false, true, '')))[1]::text::bigint \
         FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// What differs between `dumped` and `restored`, one line per table.
pub(crate) fn differences(dumped: &TableRows, restored: &TableRows) -> Vec<String> {
    let mut out = Vec::new();
    for (table, rows) in dumped {
        match restored.get(table) {
            None => out.push(format!("{table}: missing from the restore")),
            Some(found) if found != rows => {
                out.push(format!("{table}: {rows} rows dumped, {found} restored"))
            }
            Some(_) => {}
        }
    }
    for table in restored.keys().filter(|t| !dumped.contains_key(*t)) {
        out.push(format!("{table}: in the restore but not dumped"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_each_table() {
        let dumped: TableRows = [("a".into(), 2), ("b".into(), 1)].into();
        let restored: TableRows = [("a".into(), 1), ("c".into(), 0)].into();
        assert_eq!(
            differences(&dumped, &restored),
            vec![
                "a: 2 rows dumped, 1 restored",
                "b: missing from the restore",
                "c: in the restore but not dumped"
            ]
        );
        assert!(differences(&dumped, &dumped).is_empty());
    }
}
