//! Plain-text tables for human output that fit the terminal.
//!
//! Columns are as wide as their widest cell; when the table is wider than the terminal, the
//! columns marked shrinkable (ids, paths) are cut with `…` from the widest down until it fits.
//! The width is `$COLUMNS`, else the terminal's (stdout), else 100. No colours, so the text is
//! the same in a pipe, a log and a test.
//!
//! Edges: formats strings only; callers print.

use std::io::IsTerminal;

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table under construction.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    shrinkable: Vec<bool>,
    rows: Vec<Vec<String>>,
}

/// Narrowest a shrinkable column gets.
const MIN_SHRUNK: usize = 8;

impl Table {
    /// Columns as `(header, alignment, shrinkable)`.
    pub fn new(columns: &[(&str, Align, bool)]) -> Table {
        Table {
            headers: columns.iter().map(|(h, _, _)| h.to_string()).collect(),
            align: columns.iter().map(|(_, a, _)| *a).collect(),
            shrinkable: columns.iter().map(|(_, _, s)| *s).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Renders for the terminal's width.
    pub fn render(&self) -> String {
        self.render_width(terminal_width())
    }

    /// Renders within `width` characters per line when the shrinkable columns allow it.
    pub fn render_width(&self, width: usize) -> String {
        let n = self.headers.len();
        let mut widths: Vec<usize> = (0..n)
            .map(|column| {
                std::iter::once(&self.headers[column])
                    .chain(self.rows.iter().filter_map(|row| row.get(column)))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let total = |widths: &[usize]| widths.iter().sum::<usize>() + 2 * n.saturating_sub(1);
        while total(&widths) > width {
            // Shrink the widest shrinkable column by one.
            let Some((column, _)) = widths
                .iter()
                .enumerate()
                .filter(|(column, w)| self.shrinkable[*column] && **w > MIN_SHRUNK)
                .max_by_key(|(_, w)| **w)
            else {
                break;
            };
            widths[column] -= 1;
        }
        let mut out = String::new();
        let header_cells: Vec<String> = self.headers.clone();
        for cells in std::iter::once(&header_cells).chain(self.rows.iter()) {
            let mut line = String::new();
            for (column, width) in widths.iter().enumerate() {
                let cell = fit(cells.get(column).map_or("", String::as_str), *width);
                if column > 0 {
                    line.push_str("  ");
                }
                let pad = width - cell.chars().count();
                match self.align[column] {
                    Align::Left => {
                        line.push_str(&cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    Align::Right => {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(&cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `text` cut to `width` characters, ending in `…` when cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let kept: String = text.chars().take(width.saturating_sub(1)).collect();
    format!("{kept}…")
}

/// `$COLUMNS`, else the width of the terminal on stdout, else 100.
pub fn terminal_width() -> usize {
    if let Some(columns) = std::env::var("COLUMNS")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .filter(|columns| *columns > 0)
    {
        return columns;
    }
    if std::io::stdout().is_terminal() {
        // SAFETY: TIOCGWINSZ fills a `winsize` for a terminal file descriptor; stdout is one.
        let mut size: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) } == 0;
        if ok && size.ws_col > 0 {
            return usize::from(size.ws_col);
        }
    }
    100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        let mut table = Table::new(&[
            ("ID", Align::Left, true),
            ("DOWNLOADS", Align::Right, false),
        ]);
        table.row(vec![
            "acme/a-very-long-model-name-indeed".into(),
            "5".into(),
        ]);
        table.row(vec!["acme/b".into(), "12345".into()]);
        table
    }

    #[test]
    fn columns_align() {
        let text = sample().render_width(200);
        let lines: Vec<&str> = text.lines().collect();
        let id_width = "acme/a-very-long-model-name-indeed".len();
        assert_eq!(lines[0], format!("{:<id_width$}  DOWNLOADS", "ID"));
        assert_eq!(
            lines[1],
            format!("acme/a-very-long-model-name-indeed  {:>9}", 5)
        );
        assert_eq!(lines[2], format!("{:<id_width$}  {:>9}", "acme/b", 12345));
    }

    #[test]
    fn shrinks_to_fit_with_an_ellipsis() {
        let text = sample().render_width(30);
        for line in text.lines() {
            assert!(line.chars().count() <= 30, "{line:?}");
        }
        assert!(text.contains("acme/a-very-long-m…  "), "{text}");
        assert!(text.contains("12345"));
    }

    #[test]
    fn unshrinkable_columns_stay_whole_when_nothing_fits() {
        let text = sample().render_width(5);
        assert!(text.contains("DOWNLOADS"));
        assert!(text.contains("12345"));
    }
}
