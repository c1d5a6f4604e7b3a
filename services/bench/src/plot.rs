//! PNG histograms and CDFs of TTFT and ITL, drawn with plotters' bitmap backend.
//! Text uses a built-in 3×5 pixel font: plotters would need system font libraries.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::error::{BenchError, Result};
use crate::metrics::{RequestRecord, percentile};

const W: u32 = 900;
const H: u32 = 540;
const LEFT: i32 = 90;
const RIGHT: i32 = 30;
const TOP: i32 = 50;
const BOTTOM: i32 = 60;
const BINS: usize = 40;

fn plot_err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Plot(e.to_string())
}

/// Writes `ttft_hist.png`, `ttft_cdf.png`, `itl_hist.png` and `itl_cdf.png` (those
/// with data) into `dir`, creating it; returns the files written.
pub fn write_plots(dir: &Path, records: &[RequestRecord]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| BenchError::io(dir, e))?;
    let ok = records.iter().filter(|r| r.ok);
    let ttft: Vec<f64> = ok.clone().filter_map(|r| r.ttft_ms).collect();
    let itl: Vec<f64> = ok.flat_map(|r| r.itl_ms.iter().copied()).collect();
    let mut out = Vec::new();
    for (name, label, data) in [("ttft", "TTFT", ttft), ("itl", "ITL", itl)] {
        let mut v: Vec<f64> = data.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let p = dir.join(format!("{name}_hist.png"));
        histogram(&p, label, &v)?;
        out.push(p);
        let p = dir.join(format!("{name}_cdf.png"));
        cdf(&p, label, &v)?;
        out.push(p);
    }
    Ok(out)
}

/// Counts of sorted `v` in `bins` equal bins over `[0, hi]`; the last bin takes the rest.
pub fn bin_counts(v: &[f64], hi: f64, bins: usize) -> Vec<usize> {
    let mut c = vec![0; bins];
    for &x in v {
        let i = ((x / hi) * bins as f64).floor().max(0.0) as usize;
        c[i.min(bins - 1)] += 1;
    }
    c
}

/// A round tick step giving about `n` ticks over `range`.
pub fn tick_step(range: f64, n: f64) -> f64 {
    let raw = (range / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(x: f64, step: f64) -> String {
    let decimals = if step >= 1.0 {
        0
    } else {
        (-step.log10()).ceil() as usize
    };
    format!("{x:.decimals$}")
}

struct Frame<'a> {
    area: DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>,
    x_max: f64,
    y_max: f64,
}

impl Frame<'_> {
    fn px(&self, x: f64) -> i32 {
        LEFT + ((x / self.x_max) * f64::from(W as i32 - LEFT - RIGHT)).round() as i32
    }

    fn py(&self, y: f64) -> i32 {
        H as i32 - BOTTOM - ((y / self.y_max) * f64::from(H as i32 - TOP - BOTTOM)).round() as i32
    }

    fn rect(&self, a: (i32, i32), b: (i32, i32), color: RGBColor) -> Result<()> {
        self.area
            .draw(&Rectangle::new([a, b], color.filled()))
            .map_err(plot_err)
    }

    fn line(&self, pts: Vec<(i32, i32)>, color: RGBColor, width: u32) -> Result<()> {
        self.area
            .draw(&PathElement::new(pts, color.stroke_width(width)))
            .map_err(plot_err)
    }

    /// Text in the pixel font, `scale` pixels per font pixel, left-aligned at `(x, y)`.
    fn text(&self, s: &str, x: i32, y: i32, scale: i32) -> Result<()> {
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for (col, b) in bits.bytes().enumerate() {
                    if b == b'#' {
                        let (gx, gy) = (
                            x + (i as i32 * 4 + col as i32) * scale,
                            y + row as i32 * scale,
                        );
                        self.rect((gx, gy), (gx + scale - 1, gy + scale - 1), BLACK)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Right-aligned just above the plot.
    fn corner_text(&self, s: &str) -> Result<()> {
        self.text(s, W as i32 - RIGHT - Self::text_width(s, 2), TOP - 18, 2)
    }

    fn text_width(s: &str, scale: i32) -> i32 {
        (s.chars().count() as i32 * 4 - 1) * scale
    }

    /// Axes, ticks and their labels, title and axis names.
    fn axes(&self, title: &str, x_name: &str, y_name: &str, y_is_fraction: bool) -> Result<()> {
        let (x0, y0) = (LEFT, H as i32 - BOTTOM);
        let (x1, y1) = (W as i32 - RIGHT, TOP);
        let xs = tick_step(self.x_max, 6.0);
        let mut t = 0.0;
        while t <= self.x_max * 1.0001 {
            let x = self.px(t);
            self.line(vec![(x, y1), (x, y0)], RGBColor(230, 230, 230), 1)?;
            self.line(vec![(x, y0), (x, y0 + 5)], BLACK, 1)?;
            let label = fmt_tick(t, xs);
            self.text(&label, x - Self::text_width(&label, 2) / 2, y0 + 10, 2)?;
            t += xs;
        }
        let ys = if y_is_fraction {
            0.2
        } else {
            tick_step(self.y_max, 5.0)
        };
        let mut t = 0.0;
        while t <= self.y_max * 1.0001 {
            let y = self.py(t);
            self.line(vec![(x0, y), (x1, y)], RGBColor(230, 230, 230), 1)?;
            self.line(vec![(x0 - 5, y), (x0, y)], BLACK, 1)?;
            let label = fmt_tick(t, ys);
            self.text(&label, x0 - 10 - Self::text_width(&label, 2), y - 5, 2)?;
            t += ys;
        }
        self.line(vec![(x0, y1), (x0, y0), (x1, y0)], BLACK, 2)?;
        self.text(title, LEFT, 15, 3)?;
        self.text(
            x_name,
            (x0 + x1 - Self::text_width(x_name, 2)) / 2,
            y0 + 35,
            2,
        )?;
        self.text(y_name, 10, TOP - 20, 2)?;
        Ok(())
    }
}

fn frame<'a>(path: &'a Path, x_max: f64, y_max: f64) -> Result<Frame<'a>> {
    let area = BitMapBackend::new(path, (W, H)).into_drawing_area();
    area.fill(&WHITE).map_err(plot_err)?;
    Ok(Frame {
        area,
        x_max: if x_max > 0.0 { x_max } else { 1.0 },
        y_max: if y_max > 0.0 { y_max } else { 1.0 },
    })
}

fn summary_line(label: &str, v: &[f64]) -> String {
    let p = |q| percentile(v, q).unwrap_or(0.0);
    format!(
        "{label} N={} P50={:.1} P90={:.1} P99={:.1} MS",
        v.len(),
        p(50.0),
        p(90.0),
        p(99.0)
    )
}

fn histogram(path: &Path, label: &str, v: &[f64]) -> Result<()> {
    // The axis ends at p99.5 so one outlier does not squash the rest into a bar.
    let hi = percentile(v, 99.5).unwrap_or(1.0).max(f64::MIN_POSITIVE);
    let counts = bin_counts(v, hi, BINS);
    let top = counts.iter().copied().max().unwrap_or(1) as f64 * 1.1;
    let f = frame(path, hi, top)?;
    for (i, &c) in counts.iter().enumerate() {
        let (a, b) = (
            hi * i as f64 / BINS as f64,
            hi * (i + 1) as f64 / BINS as f64,
        );
        if c > 0 {
            f.rect(
                (f.px(a) + 1, f.py(c as f64)),
                (f.px(b) - 1, f.py(0.0)),
                RGBColor(70, 110, 200),
            )?;
        }
    }
    f.axes(
        &format!("{label} HISTOGRAM (LAST BIN: >= P99.5)"),
        &format!("{label} (MS)"),
        "COUNT",
        false,
    )?;
    f.corner_text(&summary_line(label, v))?;
    f.area.present().map_err(plot_err)
}

fn cdf(path: &Path, label: &str, v: &[f64]) -> Result<()> {
    let hi = v.last().copied().unwrap_or(1.0);
    let f = frame(path, hi, 1.0)?;
    let n = v.len() as f64;
    // A step function, thinned to at most about two points per pixel column.
    let every = (v.len() / (2 * W as usize)).max(1);
    let mut pts = vec![(f.px(0.0), f.py(0.0))];
    for (i, &x) in v.iter().enumerate() {
        if i % every == 0 || i + 1 == v.len() {
            pts.push((f.px(x), f.py(i as f64 / n)));
            pts.push((f.px(x), f.py((i + 1) as f64 / n)));
        }
    }
    f.axes(
        &format!("{label} CDF"),
        &format!("{label} (MS)"),
        "FRACTION",
        true,
    )?;
    f.line(pts, RGBColor(200, 60, 40), 2)?;
    f.corner_text(&summary_line(label, v))?;
    f.area.present().map_err(plot_err)
}

/// The 3×5 pixel glyph of `ch` (letters in upper case; unknown characters blank).
fn glyph(ch: char) -> [&'static str; 5] {
    match ch.to_ascii_uppercase() {
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["###", "..#", "###", "#..", "###"],
        '3' => ["###", "..#", ".##", "..#", "###"],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "###", "..#", "###"],
        '6' => ["###", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", ".#.", ".#.", ".#."],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "###"],
        '.' => ["...", "...", "...", "...", ".#."],
        '-' => ["...", "...", "###", "...", "..."],
        '%' => ["#.#", "..#", ".#.", "#..", "#.#"],
        ':' => ["...", ".#.", "...", ".#.", "..."],
        '/' => ["..#", "..#", ".#.", "#..", "#.."],
        '(' => [".#.", "#..", "#..", "#..", ".#."],
        ')' => [".#.", "..#", "..#", "..#", ".#."],
        '=' => ["...", "###", "...", "###", "..."],
        '>' => ["#..", ".#.", "..#", ".#.", "#.."],
        'A' => [".#.", "#.#", "###", "#.#", "#.#"],
        'B' => ["##.", "#.#", "##.", "#.#", "##."],
        'C' => [".##", "#..", "#..", "#..", ".##"],
        'D' => ["##.", "#.#", "#.#", "#.#", "##."],
        'E' => ["###", "#..", "##.", "#..", "###"],
        'F' => ["###", "#..", "##.", "#..", "#.."],
        'G' => [".##", "#..", "#.#", "#.#", ".##"],
        'H' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'I' => ["###", ".#.", ".#.", ".#.", "###"],
        'J' => ["..#", "..#", "..#", "#.#", ".#."],
        'K' => ["#.#", "#.#", "##.", "#.#", "#.#"],
        'L' => ["#..", "#..", "#..", "#..", "###"],
        'M' => ["#.#", "###", "###", "#.#", "#.#"],
        'N' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'O' => [".#.", "#.#", "#.#", "#.#", ".#."],
        'P' => ["##.", "#.#", "##.", "#..", "#.."],
        'Q' => [".#.", "#.#", "#.#", "##.", ".##"],
        'R' => ["##.", "#.#", "##.", "#.#", "#.#"],
        'S' => [".##", "#..", ".#.", "..#", "##."],
        'T' => ["###", ".#.", ".#.", ".#.", ".#."],
        'U' => ["#.#", "#.#", "#.#", "#.#", "###"],
        'V' => ["#.#", "#.#", "#.#", "#.#", ".#."],
        'W' => ["#.#", "#.#", "###", "###", "#.#"],
        'X' => ["#.#", "#.#", ".#.", "#.#", "#.#"],
        'Y' => ["#.#", "#.#", ".#.", ".#.", ".#."],
        'Z' => ["###", "..#", ".#.", "#..", "###"],
        _ => ["...", "...", "...", "...", "..."],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_ticks_and_png_files() {
        assert_eq!(bin_counts(&[0.0, 0.5, 1.0, 9.9, 10.0, 50.0], 10.0, 10), {
            let mut c = vec![0; 10];
            c[0] = 2;
            c[1] = 1;
            c[9] = 3;
            c
        });
        assert_eq!(tick_step(100.0, 5.0), 20.0);
        assert_eq!(tick_step(7.0, 6.0), 2.0);
        assert!((tick_step(0.3, 6.0) - 0.05).abs() < 1e-12);
        assert_eq!(fmt_tick(0.15, 0.05), "0.15");
        assert_eq!(fmt_tick(40.0, 20.0), "40");

        let recs: Vec<RequestRecord> = (0..50)
            .map(|i| RequestRecord {
                ok: true,
                ttft_ms: Some(10.0 + i as f64),
                itl_ms: vec![1.0 + (i % 7) as f64, 2.5],
                ..Default::default()
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(&dir.path().join("plots"), &recs).unwrap();
        assert_eq!(files.len(), 4);
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[1..4], b"PNG", "{}", f.display());
            assert!(
                bytes.len() > 2000,
                "{} is {} bytes",
                f.display(),
                bytes.len()
            );
        }
        // No successful request: nothing to draw.
        let none = write_plots(dir.path(), &[RequestRecord::default()]).unwrap();
        assert!(none.is_empty());
    }
}
