//! Human-readable benchmark outputs: a PNG chart of latency distributions (empirical CDFs)
//! and a Markdown results table.
//!
//! The PNG is drawn by a tiny rasteriser in this module (RGB buffer, Bresenham lines, an
//! embedded 5x7 bitmap font with descenders) and encoded with the `png` crate, so the
//! benchmark needs no plotting or font libraries.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// One latency distribution to plot.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub values_ms: &'a [f64],
}

/// One line of the Markdown table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    /// `None`: no target to judge against ("—").
    pub met: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot encode PNG for {path}: {source}")]
    Encode {
        path: PathBuf,
        source: png::EncodingError,
    },
}

/// Chart size in pixels.
pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 540;

/// Series colours, in order (the chart cycles through them).
pub const PALETTE: [[u8; 3]; 8] = [
    [31, 119, 180],  // blue
    [230, 110, 0],   // orange
    [44, 160, 44],   // green
    [214, 39, 40],   // red
    [148, 103, 189], // purple
    [140, 86, 75],   // brown
    [227, 119, 194], // pink
    [23, 190, 207],  // cyan
];

/// A PNG chart of latency distributions: one empirical CDF line per series (x = latency in
/// ms, y = fraction of pods 0..1), distinct colours, a legend with each label and its
/// p50/p99, axes with tick labels and axis titles, and a title. The x axis is linear from 0
/// with 1/2/5×10^k ticks, or log10 when every value is positive and max/min > 100.
/// Non-finite values are ignored. Creates the parent directory if needed.
pub fn write_cdf_png(path: &Path, title: &str, series: &[Series<'_>]) -> Result<(), ReportError> {
    let canvas = render_cdf(title, series);
    let mut bytes = Vec::new();
    let encode = |source| ReportError::Encode {
        path: path.to_path_buf(),
        source,
    };
    {
        let mut enc = png::Encoder::new(&mut bytes, canvas.w, canvas.h);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(encode)?;
        writer.write_image_data(&canvas.px).map_err(encode)?;
        writer.finish().map_err(encode)?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ReportError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, &bytes).map_err(|source| ReportError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// A Markdown section: `### title`, a `Machine:` line, then a table of
/// (Metric, Value, Target, Verdict). Verdict: `None` "—", `Some(true)` "✅ met",
/// `Some(false)` "❌ missed". `|` and newlines in cells are escaped.
pub fn markdown_table(title: &str, machine: &str, rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", one_line(title));
    if !machine.trim().is_empty() {
        let _ = writeln!(out, "Machine: {}\n", one_line(machine));
    }
    out.push_str("| Metric | Value | Target | Verdict |\n");
    out.push_str("| --- | ---: | ---: | --- |\n");
    for r in rows {
        let verdict = match r.met {
            None => "—",
            Some(true) => "✅ met",
            Some(false) => "❌ missed",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&r.metric),
            cell(&r.value),
            cell(&r.target),
            verdict
        );
    }
    out
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(s: &str) -> String {
    let s = one_line(s).replace('|', "\\|");
    if s.is_empty() { "—".to_string() } else { s }
}

// ---------------------------------------------------------------------------------------------
// Statistics and scales

/// Finite values, sorted ascending.
fn sorted_finite(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// Nearest-rank percentile (`p` in 0..=1) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let n = sorted.len();
    if n == 0 {
        return None;
    }
    let rank = (p * n as f64).ceil() as usize;
    sorted.get(rank.clamp(1, n) - 1).copied()
}

/// A latency for labels: 3 significant digits-ish, no exponent.
fn fmt_ms(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Scale {
    /// `lo..hi`, ticks every `step`.
    Linear { lo: f64, hi: f64, step: f64 },
    /// `10^lo_dec .. 10^hi_dec`.
    Log10 { lo_dec: i32, hi_dec: i32 },
}

impl Scale {
    /// Picks the x scale for the finite values of all series (`min`/`max` over them).
    /// `max_ticks` bounds the number of linear ticks (so labels do not overlap).
    fn choose(min: Option<f64>, max: Option<f64>, max_ticks: usize) -> Scale {
        let (min, max) = match (min, max) {
            (Some(a), Some(b)) => (a, b),
            _ => {
                return Scale::Linear {
                    lo: 0.0,
                    hi: 1.0,
                    step: 0.2,
                };
            }
        };
        if min > 0.0 && max / min > 100.0 {
            let lo_dec = min.log10().floor() as i32;
            let mut hi_dec = max.log10().ceil() as i32;
            if hi_dec <= lo_dec {
                hi_dec = lo_dec + 1;
            }
            return Scale::Log10 { lo_dec, hi_dec };
        }
        let lo = if min < 0.0 { min } else { 0.0 };
        let hi = if max > lo { max } else { lo + 1.0 };
        let mut step = nice_step((hi - lo) / max_ticks.max(1) as f64);
        // Rounding the ends outwards can add ticks: widen the step until it fits.
        loop {
            let (a, b) = ((lo / step).floor() * step, (hi / step).ceil() * step);
            if ((b - a) / step).round() as usize <= max_ticks.max(1) || !step.is_finite() {
                return Scale::Linear { lo: a, hi: b, step };
            }
            step = nice_step(step * 1.01);
        }
    }

    /// Where `v` falls, 0..1 across the axis (clamped).
    fn frac(&self, v: f64) -> f64 {
        let f = match *self {
            Scale::Linear { lo, hi, .. } => (v - lo) / (hi - lo),
            Scale::Log10 { lo_dec, hi_dec } => {
                if v <= 0.0 {
                    0.0
                } else {
                    (v.log10() - f64::from(lo_dec)) / f64::from(hi_dec - lo_dec)
                }
            }
        };
        if f.is_finite() { f.clamp(0.0, 1.0) } else { 0.0 }
    }

    /// (value, label or None for a minor grid line).
    fn ticks(&self) -> Vec<(f64, Option<String>)> {
        match *self {
            Scale::Linear { lo, hi, step } => {
                let decimals = if step >= 1.0 {
                    0
                } else {
                    (-step.log10().floor()) as usize
                };
                let n = ((hi - lo) / step).round() as i64;
                (0..=n)
                    .map(|i| {
                        let v = lo + i as f64 * step;
                        let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
                        (v, Some(format!("{v:.decimals$}")))
                    })
                    .collect()
            }
            Scale::Log10 { lo_dec, hi_dec } => {
                let mut t = Vec::new();
                for d in lo_dec..=hi_dec {
                    let base = 10f64.powi(d);
                    let decimals = if d < 0 { (-d) as usize } else { 0 };
                    t.push((base, Some(format!("{base:.decimals$}"))));
                    if d < hi_dec {
                        for m in 2..=9 {
                            t.push((base * f64::from(m), None));
                        }
                    }
                }
                t
            }
        }
    }
}

/// The smallest of 1, 2, 5 × 10^k that is >= `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 + 1e-9 {
        1.0
    } else if norm <= 2.0 + 1e-9 {
        2.0
    } else if norm <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    m * mag
}

// ---------------------------------------------------------------------------------------------
// Rendering

const WHITE: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [30, 30, 30];
const AXIS: [u8; 3] = [60, 60, 60];
const GRID: [u8; 3] = [225, 225, 225];
const GRID_MINOR: [u8; 3] = [242, 242, 242];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];

/// Text scale (font pixels → image pixels).
const TS: i64 = 2;

/// Plot area (inside the axes), in pixels.
#[derive(Debug, Clone, Copy)]
struct Area {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
}

impl Area {
    fn x(&self, frac: f64) -> i64 {
        self.left + (frac * (self.right - self.left) as f64).round() as i64
    }
    /// y for a CDF fraction: 1.0 sits a little below the top so the line stays visible.
    fn y(&self, frac: f64) -> i64 {
        let h = (self.bottom - self.top) as f64 / 1.04;
        self.bottom - (frac.clamp(0.0, 1.0) * h).round() as i64
    }
}

fn render_cdf(title: &str, series: &[Series<'_>]) -> Canvas {
    let sorted: Vec<Vec<f64>> = series.iter().map(|s| sorted_finite(s.values_ms)).collect();
    let entries: Vec<(String, [u8; 3])> = series
        .iter()
        .zip(&sorted)
        .enumerate()
        .map(|(i, (s, v))| {
            let stats = match (percentile(v, 0.5), percentile(v, 0.99)) {
                (Some(p50), Some(p99)) => {
                    format!(": p50 {} ms, p99 {} ms (n={})", fmt_ms(p50), fmt_ms(p99), v.len())
                }
                _ => ": no data".to_string(),
            };
            (
                format!("{}{stats}", one_line(s.label)),
                PALETTE[i % PALETTE.len()],
            )
        })
        .collect();

    let area = Area {
        left: 100,
        top: 56,
        right: i64::from(WIDTH) - 30,
        bottom: i64::from(HEIGHT) - 84,
    };
    let mut c = render_plot(title, &sorted, area);
    if entries.is_empty() {
        return c;
    }
    let legend = Legend::new(entries, area.right - area.left - 24);

    // Inside the plot, in the corner hiding the fewest curve pixels (CDFs leave the top left or
    // the bottom right empty)...
    let (xl, xr) = (area.left + 12, (area.right - 12 - legend.w).max(area.left + 4));
    let (yt, yb) = (area.top + 12, (area.bottom - 12 - legend.h).max(area.top + 4));
    let (covered, (x0, y0)) = [(xl, yt), (xr, yb), (xr, yt), (xl, yb)]
        .into_iter()
        .map(|(x, y)| (c.count_in(x, y, x + legend.w, y + legend.h, &PALETTE), (x, y)))
        .min_by_key(|(n, _)| *n)
        .unwrap_or((0, (xr, yb)));
    // ...or, when every corner would hide part of a curve, above a shorter plot.
    let above = Area {
        top: 46 + legend.h + 14,
        ..area
    };
    if covered > 0 && above.bottom - above.top >= 200 {
        c = render_plot(title, &sorted, above);
        legend.draw(&mut c, above.left, 46);
    } else {
        legend.draw(&mut c, x0, y0);
    }
    c
}

/// Title, grid, axes with ticks and titles, and the CDF lines.
fn render_plot(title: &str, sorted: &[Vec<f64>], area: Area) -> Canvas {
    let mut c = Canvas::new(WIDTH, HEIGHT, WHITE);

    // Title, centred (truncated to the width).
    let title = fit(title, (i64::from(WIDTH) - 20) / advance());
    c.text((i64::from(WIDTH) - text_width(&title)) / 2, 16, &title, TEXT);

    let min = sorted.iter().filter_map(|v| v.first().copied()).reduce(f64::min);
    let max = sorted.iter().filter_map(|v| v.last().copied()).reduce(f64::max);
    // Room for labels of up to ~6 characters between ticks.
    let max_ticks = ((area.right - area.left) / (advance() * 8)).max(1) as usize;
    let scale = Scale::choose(min, max, max_ticks);

    // Grid and tick labels.
    for i in 0..=10 {
        let f = f64::from(i) / 10.0;
        let y = area.y(f);
        c.hline(
            area.left,
            area.right,
            y,
            if i % 2 == 0 { GRID } else { GRID_MINOR },
        );
        if i % 2 == 0 {
            let label = format!("{f:.1}");
            c.text(area.left - 10 - text_width(&label), y - 7, &label, TEXT);
            c.hline(area.left - 6, area.left, y, AXIS);
        }
    }
    let mut last_label_end = i64::MIN;
    for (v, label) in scale.ticks() {
        let x = area.x(scale.frac(v));
        match label {
            Some(label) => {
                c.vline(x, area.top, area.bottom, GRID);
                c.vline(x, area.bottom, area.bottom + 6, AXIS);
                let w = text_width(&label);
                let lx = (x - w / 2).clamp(0, i64::from(WIDTH) - w);
                if lx > last_label_end + advance() {
                    c.text(lx, area.bottom + 12, &label, TEXT);
                    last_label_end = lx + w;
                }
            }
            None => c.vline(x, area.top, area.bottom, GRID_MINOR),
        }
    }

    // Axes.
    c.rect_outline(area.left, area.top, area.right, area.bottom, AXIS);
    c.hline(area.left, area.right, area.bottom + 1, AXIS);
    c.vline(area.left - 1, area.top, area.bottom, AXIS);
    let x_title = match scale {
        Scale::Linear { .. } => "latency (ms)",
        Scale::Log10 { .. } => "latency (ms, log scale)",
    };
    c.text(
        (area.left + area.right - text_width(x_title)) / 2,
        area.bottom + 46,
        x_title,
        TEXT,
    );
    let y_title = "fraction of pods";
    c.text_up(
        16,
        (area.top + area.bottom + text_width(y_title)) / 2,
        y_title,
        TEXT,
    );

    if min.is_none() {
        let msg = "no data";
        let (cx, cy) = ((area.left + area.right) / 2, (area.top + area.bottom) / 2);
        c.text(cx - text_width(msg) / 2, cy - 7, msg, AXIS);
    }

    // The CDFs, as step functions: at each sorted value the fraction rises by 1/n.
    for (i, v) in sorted.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let n = v.len() as f64;
        let Some(first) = v.first() else { continue };
        let mut px = area.x(scale.frac(*first));
        let mut py = area.y(0.0);
        for (k, value) in v.iter().enumerate() {
            let x = area.x(scale.frac(*value));
            let y = area.y((k + 1) as f64 / n);
            c.thick_line(px, py, x, py, color);
            c.thick_line(x, py, x, y, color);
            (px, py) = (x, y);
        }
        c.thick_line(px, py, area.right, py, color);
    }
    c
}

/// The legend box: a colour swatch and a text line per series.
struct Legend {
    entries: Vec<(String, [u8; 3])>,
    w: i64,
    h: i64,
}

impl Legend {
    const PAD: i64 = 10;
    const SWATCH: i64 = 28;
    const LINE_H: i64 = 24;

    /// Lines are truncated so the box is at most `max_w` wide.
    fn new(entries: Vec<(String, [u8; 3])>, max_w: i64) -> Self {
        let max_chars = (max_w - 2 * Self::PAD - Self::SWATCH - 10) / advance();
        let entries: Vec<(String, [u8; 3])> = entries
            .into_iter()
            .map(|(t, col)| (fit(&t, max_chars), col))
            .collect();
        let text_w = entries.iter().map(|(t, _)| text_width(t)).max().unwrap_or(0);
        let w = Self::PAD + Self::SWATCH + 10 + text_w + Self::PAD;
        let h = 2 * Self::PAD + Self::LINE_H * entries.len() as i64 - 8;
        Self { entries, w, h }
    }

    fn draw(&self, c: &mut Canvas, x0: i64, y0: i64) {
        c.fill_rect(x0, y0, x0 + self.w, y0 + self.h, WHITE);
        c.rect_outline(x0, y0, x0 + self.w, y0 + self.h, LEGEND_BORDER);
        for (k, (t, color)) in self.entries.iter().enumerate() {
            let ty = y0 + Self::PAD + k as i64 * Self::LINE_H;
            let ly = ty + 6;
            c.fill_rect(x0 + Self::PAD, ly, x0 + Self::PAD + Self::SWATCH, ly + 3, *color);
            c.text(x0 + Self::PAD + Self::SWATCH + 10, ty, t, TEXT);
        }
    }
}

/// Truncates `s` to at most `max_chars` characters, ending with "..." when cut.
fn fit(s: &str, max_chars: i64) -> String {
    let max = usize::try_from(max_chars).unwrap_or(0);
    if s.chars().count() <= max {
        return s.to_string();
    }
    let keep = max.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.push_str(&".".repeat(max.min(3)));
    out
}

/// Horizontal distance between characters, in image pixels.
fn advance() -> i64 {
    (GLYPH_W + 1) * TS
}

fn text_width(s: &str) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 { 0 } else { n * advance() - TS }
}

/// An RGB image.
struct Canvas {
    w: u32,
    h: u32,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: u32, h: u32, bg: [u8; 3]) -> Self {
        let px = bg
            .iter()
            .copied()
            .cycle()
            .take(w as usize * h as usize * 3)
            .collect();
        Self { w, h, px }
    }

    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x < 0 || y < 0 || x >= i64::from(self.w) || y >= i64::from(self.h) {
            return;
        }
        let i = (y as usize * self.w as usize + x as usize) * 3;
        if let Some(p) = self.px.get_mut(i..i + 3) {
            p.copy_from_slice(&c);
        }
    }

    fn fill_rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// How many pixels in the rectangle have one of `colors`.
    fn count_in(&self, x0: i64, y0: i64, x1: i64, y1: i64, colors: &[[u8; 3]]) -> usize {
        let mut n = 0;
        for y in y0.max(0)..=y1.min(i64::from(self.h) - 1) {
            for x in x0.max(0)..=x1.min(i64::from(self.w) - 1) {
                let i = (y as usize * self.w as usize + x as usize) * 3;
                if self
                    .px
                    .get(i..i + 3)
                    .is_some_and(|p| colors.iter().any(|c| p == c))
                {
                    n += 1;
                }
            }
        }
        n
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: [u8; 3]) {
        self.fill_rect(x0, y, x1, y, c);
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: [u8; 3]) {
        self.fill_rect(x, y0, x, y1, c);
    }

    fn rect_outline(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        self.hline(x0, x1, y0, c);
        self.hline(x0, x1, y1, c);
        self.vline(x0, y0, y1, c);
        self.vline(x1, y0, y1, c);
    }

    /// Bresenham with a 3x3 brush (lines about 3 px wide).
    fn thick_line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.fill_rect(x - 1, y - 1, x + 1, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Draws `s` with its top-left at (x, y), reading left to right.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        self.draw_text(x, y, s, c, false);
    }

    /// Draws `s` rotated 90° anticlockwise (reading bottom to top), starting at (x, y) = the
    /// bottom-left of the text.
    fn text_up(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        self.draw_text(x, y, s, c, true);
    }

    fn draw_text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3], up: bool) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let along = i as i64 * advance();
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (1 << (GLYPH_W - 1 - col)) == 0 {
                        continue;
                    }
                    let (gx, gy) = (along + col * TS, r as i64 * TS);
                    let (px, py) = if up {
                        (x + gy, y - gx - TS + 1)
                    } else {
                        (x + gx, y + gy)
                    };
                    self.fill_rect(px, py, px + TS - 1, py + TS - 1, c);
                }
            }
        }
    }
}

const GLYPH_W: i64 = 5;

/// The bitmap of `ch` (unknown characters draw as '?').
fn glyph(ch: char) -> &'static [u8; 9] {
    FONT.iter()
        .find(|(c, _)| *c == ch)
        .or_else(|| FONT.iter().find(|(c, _)| *c == '?'))
        .map_or(&[0; 9], |(_, rows)| rows)
}

/// A 5x7 font with two descender rows: 9 rows per glyph, top first, bit 4 = leftmost column.
#[rustfmt::skip]
const FONT: &[(char, [u8; 9])] = &[
    ('0', [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('1', [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('2', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000]),
    ('3', [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('4', [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000, 0b00000]),
    ('5', [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('6', [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('7', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000]),
    ('8', [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('9', [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000, 0b00000]),
    ('A', [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('B', [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000]),
    ('C', [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('D', [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000, 0b00000]),
    ('E', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('F', [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('G', [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('H', [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('I', [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('J', [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000, 0b00000]),
    ('K', [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000]),
    ('L', [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('M', [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('N', [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('O', [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('P', [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('Q', [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000, 0b00000]),
    ('R', [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000]),
    ('S', [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000, 0b00000]),
    ('T', [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('U', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('V', [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000]),
    ('W', [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000]),
    ('X', [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('Y', [0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
    ('Z', [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000, 0b00000]),
    ('a', [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('b', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000]),
    ('c', [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('d', [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000]),
    ('e', [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000, 0b00000]),
    ('f', [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000]),
    ('g', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('h', [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('i', [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('j', [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100]),
    ('k', [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000, 0b00000]),
    ('l', [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000]),
    ('m', [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10101, 0b10101, 0b00000, 0b00000]),
    ('n', [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000]),
    ('o', [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000]),
    ('p', [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000]),
    ('q', [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001]),
    ('r', [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000]),
    ('s', [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000, 0b00000]),
    ('t', [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000, 0b00000]),
    ('u', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000, 0b00000]),
    ('v', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000]),
    ('w', [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000]),
    ('x', [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000, 0b00000]),
    ('y', [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110]),
    ('z', [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000]),
    (' ', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('.', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000]),
    (',', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00100, 0b01000]),
    (':', [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000, 0b00000]),
    ('-', [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('_', [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111, 0b00000]),
    ('%', [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000, 0b00000]),
    ('(', [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000]),
    (')', [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000]),
    ('/', [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000, 0b00000]),
    ('=', [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('<', [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000]),
    ('>', [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000]),
    ('+', [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000, 0b00000]),
    ('?', [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000]),
    ('!', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000]),
    ('\'', [0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000]),
    ('[', [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0b00000, 0b00000]),
    (']', [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0b00000, 0b00000]),
    ('*', [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000, 0b00000, 0b00000]),
    ('#', [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0b00000, 0b00000]),
    ('|', [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000]),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_png(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("vnest-report-{name}-{}-{nanos}.png", std::process::id()))
    }

    /// Decodes a PNG written by `write_cdf_png`: (width, height, RGB bytes).
    fn decode(path: &Path) -> (u32, u32, Vec<u8>) {
        let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
        let mut reader = png::Decoder::new(file).read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn count(px: &[u8], c: [u8; 3]) -> usize {
        px.chunks_exact(3).filter(|p| *p == c).count()
    }

    fn latencies(n: usize, base: f64, spread: f64) -> Vec<f64> {
        (0..n)
            .map(|i| base + spread * ((i * 37 % n) as f64 / n as f64).powi(2))
            .collect()
    }

    #[test]
    fn cdf_png_roundtrip_has_both_series_colours() {
        let host = latencies(100, 900.0, 1500.0);
        let virt = latencies(100, 1100.0, 2500.0);
        let path = temp_png("cdf");
        write_cdf_png(
            &path,
            "Pod startup latency: host vs virtual cluster",
            &[
                Series {
                    label: "host",
                    values_ms: &host,
                },
                Series {
                    label: "virtual (vnest)",
                    values_ms: &virt,
                },
            ],
        )
        .unwrap();
        let (w, h, px) = decode(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!((w, h), (WIDTH, HEIGHT));
        assert_eq!(px.len(), (w * h * 3) as usize);
        // Both CDF lines are drawn (far more pixels than the legend swatches alone).
        assert!(
            count(&px, PALETTE[0]) > 1000,
            "blue series: {}",
            count(&px, PALETTE[0])
        );
        assert!(
            count(&px, PALETTE[1]) > 1000,
            "orange series: {}",
            count(&px, PALETTE[1])
        );
        // Not blank: plenty of text/axis pixels and mostly white background.
        let white = count(&px, WHITE);
        let total = (w * h) as usize;
        assert!(
            white < total - 5000 && white > total / 2,
            "white pixels: {white} of {total}"
        );
        assert!(count(&px, TEXT) > 2000);
    }

    #[test]
    fn empty_and_single_value_series_do_not_panic() {
        let one = [42.0];
        let weird = [f64::NAN, f64::INFINITY, 0.0, 0.0];
        for (name, series) in [
            ("none", vec![]),
            (
                "empty",
                vec![Series {
                    label: "empty",
                    values_ms: &[],
                }],
            ),
            (
                "single",
                vec![
                    Series {
                        label: "one",
                        values_ms: &one,
                    },
                    Series {
                        label: "empty",
                        values_ms: &[],
                    },
                ],
            ),
            (
                "zeros",
                vec![Series {
                    label: "zeros and NaN",
                    values_ms: &weird,
                }],
            ),
        ] {
            let path = temp_png(name);
            write_cdf_png(&path, "", &series).unwrap();
            let (w, h, px) = decode(&path);
            std::fs::remove_file(&path).unwrap();
            assert_eq!((w, h), (WIDTH, HEIGHT), "{name}");
            assert!(count(&px, AXIS) > 0, "{name}: axes drawn");
        }
    }

    #[test]
    fn creates_parent_directory() {
        let dir = temp_png("dir").with_extension("d");
        let path = dir.join("nested").join("cdf.png");
        write_cdf_png(
            &path,
            "t",
            &[Series {
                label: "a",
                values_ms: &[1.0, 2.0],
            }],
        )
        .unwrap();
        assert!(path.is_file());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn markdown_table_has_header_and_verdicts() {
        let rows = vec![
            Row {
                metric: "pod startup p50 ratio".into(),
                value: "1.08x".into(),
                target: "<= 1.2x".into(),
                met: Some(true),
            },
            Row {
                metric: "syncer-added p99".into(),
                value: "812 ms".into(),
                target: "< 500 ms".into(),
                met: Some(false),
            },
            Row {
                metric: "a|b".into(),
                value: "3".into(),
                target: String::new(),
                met: None,
            },
        ];
        let md = markdown_table("Pod startup", "2 vCPU, 8 GiB", &rows);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "### Pod startup");
        assert!(md.contains("Machine: 2 vCPU, 8 GiB\n"));
        let header = lines
            .iter()
            .position(|l| *l == "| Metric | Value | Target | Verdict |")
            .unwrap();
        assert_eq!(lines[header + 1], "| --- | ---: | ---: | --- |");
        assert_eq!(
            lines[header + 2],
            "| pod startup p50 ratio | 1.08x | <= 1.2x | ✅ met |"
        );
        assert_eq!(
            lines[header + 3],
            "| syncer-added p99 | 812 ms | < 500 ms | ❌ missed |"
        );
        assert_eq!(lines[header + 4], "| a\\|b | 3 | — | — |");
        assert_eq!(lines.len(), header + 5);
    }

    #[test]
    fn nice_linear_and_log_scales() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(700.0), 1000.0);
        let Scale::Linear { lo, hi, step } = Scale::choose(Some(900.0), Some(3400.0), 8) else {
            panic!("expected a linear scale")
        };
        assert_eq!((lo, hi, step), (0.0, 3500.0, 500.0));
        let s = Scale::choose(Some(2.0), Some(5000.0), 8);
        assert_eq!(s, Scale::Log10 { lo_dec: 0, hi_dec: 4 });
        let labels: Vec<String> = s.ticks().into_iter().filter_map(|(_, l)| l).collect();
        assert_eq!(labels, ["1", "10", "100", "1000", "10000"]);
        assert_eq!(
            Scale::choose(None, None, 8),
            Scale::Linear {
                lo: 0.0,
                hi: 1.0,
                step: 0.2
            }
        );
        assert_eq!(Scale::choose(Some(0.0), Some(0.0), 8).ticks().len(), 6);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn font_covers_required_characters() {
        let required = ('0'..='9')
            .chain('A'..='Z')
            .chain('a'..='z')
            .chain(" .,:-_%()/=<>+".chars());
        for ch in required {
            assert!(FONT.iter().any(|(c, _)| *c == ch), "missing glyph {ch:?}");
        }
        assert!(FONT.iter().all(|(_, rows)| rows.iter().all(|r| *r < 32)));
    }

    /// Writes the sample charts (for eyeballing, into the temp dir as `vnest-report-sample*.png`)
    /// and checks each is a PNG of the chart's size.
    #[test]
    fn sample_png() {
        let dir = std::env::temp_dir();
        let path = |name: &str| dir.join(format!("vnest-report-sample{name}.png"));
        let host = latencies(200, 1200.0, 1800.0);
        let virt = latencies(200, 1350.0, 2600.0);
        write_cdf_png(
            &path(""),
            "Pod startup latency (create -> Running), 200 pods",
            &[
                Series {
                    label: "host cluster",
                    values_ms: &host,
                },
                Series {
                    label: "virtual cluster (vnest)",
                    values_ms: &virt,
                },
            ],
        )
        .unwrap();
        let fast: Vec<f64> = latencies(50, 3.0, 40.0);
        let slow: Vec<f64> = latencies(50, 80.0, 9000.0);
        write_cdf_png(
            &path("-log"),
            "Wide range (log x): syncer-added latency",
            &[
                Series {
                    label: "fast",
                    values_ms: &fast,
                },
                Series {
                    label: "slow",
                    values_ms: &slow,
                },
                Series {
                    label: "single",
                    values_ms: &[250.0],
                },
                Series {
                    label: "empty",
                    values_ms: &[],
                },
            ],
        )
        .unwrap();
        write_cdf_png(
            &path("-inside"),
            "Short labels: legend inside the plot",
            &[
                Series {
                    label: "host",
                    values_ms: &host,
                },
                Series {
                    label: "vnest",
                    values_ms: &virt,
                },
            ],
        )
        .unwrap();
        write_cdf_png(&path("-empty"), "No data", &[]).unwrap();
        for name in ["", "-log", "-inside", "-empty"] {
            let file = std::fs::File::open(path(name)).unwrap();
            let info = png::Decoder::new(std::io::BufReader::new(file))
                .read_info()
                .unwrap();
            assert_eq!((info.info().width, info.info().height), (WIDTH, HEIGHT), "{name}");
        }
    }
}
