//! kubectl's table output: upper-case headers, columns padded with three spaces, the last
//! column unpadded, no trailing spaces.

/// `headers` over `rows`, each row as many cells as there are headers.
pub(super) fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}   "));
            }
        }
        out.trim_end().to_owned() + "\n"
    };
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut out = line(&headers);
    for row in rows {
        out.push_str(&line(row));
    }
    out
}
