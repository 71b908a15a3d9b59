//! Shared rendering: terminal-fitting tables, amounts, and the JSON of `--json`.

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::domain::{Money, display_decimal};

/// A table that wraps to the terminal width (100 columns when not a terminal).
pub fn table<I, S>(header: I) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    if t.width().is_none() {
        t.set_width(100);
    }
    t
}

/// Prints an answer as the app serialises it: the same bytes the HTTP API answers.
pub fn print_json<T: Serialize>(answer: &T) -> anyhow::Result<()> {
    println!("{}", crate::app::to_json(answer)?);
    Ok(())
}

/// An amount with its currency in a table cell, e.g. `0.018 USD`, `10.00 USD`.
pub fn money(m: &Money) -> String {
    format!("{} {}", display_decimal(m.amount), m.currency)
}

/// A signed change in a table cell: `+12.50`, `-0.0111`, empty for zero.
pub fn signed(d: Decimal) -> String {
    if d.is_zero() {
        String::new()
    } else if d.is_sign_positive() {
        format!("+{}", display_decimal(d))
    } else {
        display_decimal(d)
    }
}
