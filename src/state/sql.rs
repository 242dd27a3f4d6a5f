//! SQL written once for both stores: statements use PostgreSQL's `$N` placeholders (SQLite
//! is given them as `?N`, the same numbering), parameters are one of two types both drivers
//! bind, and a row is read through one trait whatever the driver. A leaf: `StateDb::select`
//! and `execute` (in `mod.rs`) run them on either store; the read API (`read.rs`), the event
//! writes (`apply.rs`) and the lease (`lease.rs`) are written on top, once.

use std::borrow::Cow;

use tokio_postgres::types::ToSql;

/// A statement's parameter: every column the stores compare or write is a BIGINT or a TEXT.
#[derive(Debug, Clone)]
pub(crate) enum Param<'a> {
    Int(Option<i64>),
    Text(Option<Cow<'a, str>>),
}

impl<'a> Param<'a> {
    pub(crate) fn text(text: Option<&'a str>) -> Self {
        Param::Text(text.map(Cow::Borrowed))
    }
}

/// The texts of `params`, borrowed, for the binding functions below to point at.
pub(super) fn texts<'p>(params: &'p [Param<'_>]) -> Vec<Option<&'p str>> {
    params
        .iter()
        .map(|p| match p {
            Param::Text(text) => text.as_deref(),
            Param::Int(_) => None,
        })
        .collect()
}

/// `params` as SQLite binds them (`texts`: their `texts`).
pub(super) fn sqlite_values<'p>(params: &'p [Param<'_>], texts: &'p [Option<&'p str>]) -> Vec<&'p dyn rusqlite::ToSql> {
    params
        .iter()
        .zip(texts)
        .map(|(p, text)| match p {
            Param::Int(v) => v as &dyn rusqlite::ToSql,
            Param::Text(_) => text as &dyn rusqlite::ToSql,
        })
        .collect()
}

/// `params` as PostgreSQL binds them (`texts`: their `texts`).
pub(super) fn pg_values<'p>(params: &'p [Param<'_>], texts: &'p [Option<&'p str>]) -> Vec<&'p (dyn ToSql + Sync)> {
    params
        .iter()
        .zip(texts)
        .map(|(p, text)| match p {
            Param::Int(v) => v as &(dyn ToSql + Sync),
            Param::Text(_) => text as &(dyn ToSql + Sync),
        })
        .collect()
}

/// A row of either driver, read by column index. A value of the wrong type is a corrupt row
/// (an error naming the column), never a default.
pub(crate) trait Row {
    fn int(&self, i: usize) -> Result<Option<i64>, String>;
    fn text(&self, i: usize) -> Result<Option<String>, String>;
}

/// Shorthands for NOT NULL columns.
pub(crate) trait RowExt: Row {
    fn int_of(&self, i: usize) -> Result<i64, String> {
        self.int(i)?.ok_or_else(|| format!("column {i} is NULL"))
    }
    fn text_of(&self, i: usize) -> Result<String, String> {
        self.text(i)?.ok_or_else(|| format!("column {i} is NULL"))
    }
}

impl<R: Row + ?Sized> RowExt for R {}

impl Row for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, String> {
        self.get(i).map_err(|e| format!("column {i}: {e}"))
    }
    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.get(i).map_err(|e| format!("column {i}: {e}"))
    }
}

impl Row for tokio_postgres::Row {
    fn int(&self, i: usize) -> Result<Option<i64>, String> {
        self.try_get(i).map_err(|e| format!("column {i}: {e}"))
    }
    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.try_get(i).map_err(|e| format!("column {i}: {e}"))
    }
}

/// `$N` as SQLite's `?N`. The statements hold no `$` elsewhere (no dollar quoting, no `$` in
/// a literal): a test reads every statement of `read.rs` through it.
pub(crate) fn sqlite_dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_renumbered_for_sqlite_and_nothing_else_changes() {
        assert_eq!(
            sqlite_dialect("SELECT a FROM t WHERE ($1 IS NULL OR b = $1) AND c < $12 LIMIT $2"),
            "SELECT a FROM t WHERE (?1 IS NULL OR b = ?1) AND c < ?12 LIMIT ?2"
        );
        assert_eq!(sqlite_dialect("SELECT '$' || x, $y FROM t"), "SELECT '$' || x, $y FROM t");
    }
}
