//! The bench's PNG charts: latency distributions as empirical CDFs, drawn with `plotters` on
//! an in-memory RGB bitmap and encoded with the `png` crate.
//!
//! Text needs a TrueType font, read at run time: `$VNEST_BENCH_FONT`, else DejaVu Sans
//! (Debian's `fonts-dejavu-core`). Without one the chart is still drawn (lines, grid, axes)
//! but without any text, and the bench says so once on stderr.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One latency distribution to plot.
#[derive(Debug, Clone, Copy)]
pub struct Series<'a> {
    pub label: &'a str,
    pub values_ms: &'a [f64],
}

/// Chart size in pixels.
pub const WIDTH: u32 = 900;
pub const HEIGHT: u32 = 540;

/// Series colours, in order (the chart cycles through them).
pub const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),  // blue
    RGBColor(230, 110, 0),   // orange
    RGBColor(44, 160, 44),   // green
    RGBColor(214, 39, 40),   // red
    RGBColor(148, 103, 189), // purple
    RGBColor(140, 86, 75),   // brown
    RGBColor(227, 119, 194), // pink
    RGBColor(23, 190, 207),  // cyan
];

const TEXT: RGBColor = RGBColor(30, 30, 30);
const AXIS: RGBColor = RGBColor(60, 60, 60);
const GRID: RGBColor = RGBColor(225, 225, 225);
const GRID_MINOR: RGBColor = RGBColor(242, 242, 242);
const LEGEND_BORDER: RGBColor = RGBColor(170, 170, 170);

/// Where the font comes from, in order.
const FONT_ENV: &str = "VNEST_BENCH_FONT";
const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
/// The family the font is registered under (plotters' `FontFamily::SansSerif`).
const FAMILY: &str = "sans-serif";

/// Registers the chart font with plotters once per process. `false` (after one message on
/// stderr) when no font could be read or parsed: charts are then drawn without text.
pub fn font_available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| match load_font() {
        Ok(()) => true,
        Err(e) => {
            eprintln!("[bench] charts are drawn without text: {e:#}");
            false
        }
    })
}

fn load_font() -> anyhow::Result<()> {
    let path = std::env::var_os(FONT_ENV).map_or_else(|| FONT_PATH.into(), std::path::PathBuf::from);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "cannot read the font {} (install Debian's fonts-dejavu-core, or point {FONT_ENV} at a .ttf file)",
            path.display()
        )
    })?;
    // plotters keeps registered fonts for the whole process: the bytes live as long.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a TrueType/OpenType font", path.display()))
}

/// A PNG chart of latency distributions: one empirical CDF line per series (x = latency in
/// ms, y = fraction of pods 0..1), distinct colours, a legend with each label and its p50/p99,
/// axes with tick labels and titles, and a title. The x axis is linear from 0, or log10 when
/// every value is positive and max/min > 100. Non-finite values are ignored. Creates the
/// parent directory if needed.
pub fn write_cdf_png(path: &Path, title: &str, series: &[Series<'_>]) -> anyhow::Result<()> {
    let rgb = render_cdf(title, series, font_available())?;
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header()?;
        writer.write_image_data(&rgb)?;
        writer.finish()?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

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

/// A tick label: no exponent, no trailing zeros.
fn fmt_tick(v: f64) -> String {
    if v.abs() >= 1.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// The x axis for values from `min` to `max` (over all series).
#[derive(Debug, Clone, Copy, PartialEq)]
enum XAxis {
    Linear {
        lo: f64,
        hi: f64,
    },
    /// `10^lo_dec .. 10^hi_dec`.
    Log10 {
        lo_dec: i32,
        hi_dec: i32,
    },
}

impl XAxis {
    fn choose(min: Option<f64>, max: Option<f64>) -> XAxis {
        let (Some(min), Some(max)) = (min, max) else {
            return XAxis::Linear { lo: 0.0, hi: 1.0 };
        };
        if min > 0.0 && max / min > 100.0 {
            let lo_dec = min.log10().floor() as i32;
            let hi_dec = (max.log10().ceil() as i32).max(lo_dec + 1);
            return XAxis::Log10 { lo_dec, hi_dec };
        }
        let lo = min.min(0.0);
        let hi = if max > lo { max * 1.02 } else { lo + 1.0 };
        XAxis::Linear { lo, hi }
    }

    fn right(self) -> f64 {
        match self {
            XAxis::Linear { hi, .. } => hi,
            XAxis::Log10 { hi_dec, .. } => 10f64.powi(hi_dec),
        }
    }
}

/// One series ready to draw: its legend text, colour and the CDF as a step line.
struct Curve {
    legend: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

/// The CDF of sorted values as a step function: at each value the fraction rises by 1/n; the
/// line runs on at 1.0 to `right`.
fn cdf_steps(sorted: &[f64], right: f64) -> Vec<(f64, f64)> {
    let Some(first) = sorted.first() else {
        return Vec::new();
    };
    let n = sorted.len() as f64;
    let mut points = Vec::with_capacity(2 * sorted.len() + 2);
    points.push((*first, 0.0));
    for (k, v) in sorted.iter().enumerate() {
        points.push((*v, k as f64 / n));
        points.push((*v, (k + 1) as f64 / n));
    }
    points.push((right.max(sorted[sorted.len() - 1]), 1.0));
    points
}

/// The chart as RGB bytes (`WIDTH * HEIGHT * 3`). With `text == false` nothing that needs a
/// font is drawn.
fn render_cdf(title: &str, series: &[Series<'_>], text: bool) -> anyhow::Result<Vec<u8>> {
    let sorted: Vec<Vec<f64>> = series.iter().map(|s| sorted_finite(s.values_ms)).collect();
    let min = sorted.iter().filter_map(|v| v.first().copied()).reduce(f64::min);
    let max = sorted.iter().filter_map(|v| v.last().copied()).reduce(f64::max);
    let axis = XAxis::choose(min, max);
    let curves: Vec<Curve> = series
        .iter()
        .zip(&sorted)
        .enumerate()
        .map(|(i, (s, v))| {
            let stats = match (percentile(v, 0.5), percentile(v, 0.99)) {
                (Some(p50), Some(p99)) => {
                    format!(": p50 {} ms, p99 {} ms (n={})", fmt_ms(p50), fmt_ms(p99), v.len())
                }
                _ => ": no data".to_owned(),
            };
            let label = s.label.split_whitespace().collect::<Vec<_>>().join(" ");
            Curve {
                legend: format!("{label}{stats}"),
                color: PALETTE[i % PALETTE.len()],
                points: cdf_steps(v, axis.right()),
            }
        })
        .collect();

    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let chart = Chart {
            title,
            curves: &curves,
            text,
            no_data: min.is_none(),
        };
        match axis {
            XAxis::Linear { lo, hi } => chart.draw(&root, lo..hi, "latency (ms)")?,
            XAxis::Log10 { lo_dec, hi_dec } => chart.draw(
                &root,
                (10f64.powi(lo_dec)..10f64.powi(hi_dec)).log_scale(),
                "latency (ms, log scale)",
            )?,
        }
        root.present()?;
    }
    Ok(buf)
}

struct Chart<'a> {
    title: &'a str,
    curves: &'a [Curve],
    text: bool,
    no_data: bool,
}

type Area<'b> = DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>;

impl Chart<'_> {
    /// Title, grid, axes with ticks and titles, the CDF lines and the legend, on x axis `x`.
    fn draw<X>(&self, root: &Area<'_>, x: X, x_desc: &str) -> anyhow::Result<()>
    where
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: ValueFormatter<f64>,
    {
        let font = |size: u32| (FAMILY, size).into_font().color(&TEXT);
        let mut builder = ChartBuilder::on(root);
        builder.margin(16).margin_right(30);
        if self.text {
            builder
                .caption(self.title, font(22))
                .x_label_area_size(56)
                .y_label_area_size(70);
        }
        // 1.0 sits a little below the top so the line stays visible.
        let mut chart = builder.build_cartesian_2d(x, 0f64..1.04)?;
        let tick = |v: &f64| fmt_tick(*v);
        let fraction = |v: &f64| format!("{v:.1}");
        let mut mesh = chart.configure_mesh();
        mesh.bold_line_style(GRID)
            .light_line_style(GRID_MINOR)
            .axis_style(AXIS)
            .max_light_lines(4)
            .y_labels(6)
            .x_labels(10);
        if self.text {
            mesh.x_desc(x_desc)
                .y_desc("fraction of pods")
                .label_style(font(15))
                .axis_desc_style(font(17))
                .x_label_formatter(&tick)
                .y_label_formatter(&fraction);
        }
        mesh.draw()?;
        let plot = chart.plotting_area();
        let (xr, yr) = (plot.get_x_range(), plot.get_y_range());
        plot.draw(&Rectangle::new(
            [(xr.start, yr.start), (xr.end, yr.end)],
            AXIS.stroke_width(1),
        ))?;
        if self.no_data && self.text {
            let pixels = plot.strip_coord_spec();
            let (w, h) = pixels.dim_in_pixel();
            let centre = Pos::new(HPos::Center, VPos::Center);
            pixels.draw(&Text::new(
                "no data",
                ((w / 2) as i32, (h / 2) as i32),
                font(20).pos(centre),
            ))?;
        }
        for curve in self.curves {
            let color = curve.color;
            let drawn = chart.draw_series(LineSeries::new(
                curve.points.iter().copied(),
                color.stroke_width(2),
            ))?;
            if self.text {
                drawn
                    .label(curve.legend.as_str())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3)));
            }
        }
        if self.text && !self.curves.is_empty() {
            // CDFs leave the lower right empty: x large, fraction small.
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .margin(12)
                .background_style(WHITE)
                .border_style(LEGEND_BORDER)
                .label_font(font(15))
                .draw()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_png(name: &str) -> std::path::PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        std::env::temp_dir().join(format!("vnest-chart-{name}-{}-{nanos}.png", std::process::id()))
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

    fn count(px: &[u8], c: RGBColor) -> usize {
        px.chunks_exact(3).filter(|p| *p == [c.0, c.1, c.2]).count()
    }

    /// Pixels darker than light grey in rows `y0..y1`: text, axes, or curves.
    fn dark_in_rows(px: &[u8], y0: u32, y1: u32) -> usize {
        let row = (WIDTH * 3) as usize;
        px[y0 as usize * row..y1 as usize * row]
            .chunks_exact(3)
            .filter(|p| p.iter().all(|c| *c < 160))
            .count()
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
        for (i, name) in ["blue", "orange"].iter().enumerate() {
            let n = count(&px, PALETTE[i]);
            assert!(n > 1000, "{name} series: {n} pixels");
        }
        // Not blank, mostly white background.
        let white = count(&px, WHITE);
        let total = (w * h) as usize;
        assert!(
            white < total - 5000 && white > total / 2,
            "white pixels: {white} of {total}"
        );
        // With a font, the title band holds text; without one it stays empty.
        let title = dark_in_rows(&px, 0, 14);
        if font_available() {
            let title = dark_in_rows(&px, 14, 44);
            assert!(title > 200, "title pixels: {title}");
        } else {
            assert_eq!(title, 0);
        }
    }

    #[test]
    fn draws_without_a_font() {
        let host = latencies(50, 5.0, 400.0);
        let rgb = render_cdf(
            "no text",
            &[Series {
                label: "host",
                values_ms: &host,
            }],
            false,
        )
        .unwrap();
        assert_eq!(rgb.len(), (WIDTH * HEIGHT * 3) as usize);
        assert!(count(&rgb, PALETTE[0]) > 500);
        assert!(count(&rgb, AXIS) > 1000, "axes and frame drawn");
        // Nothing above the plot: no title.
        assert_eq!(dark_in_rows(&rgb, 0, 14), 0);
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
    fn linear_and_log_axes() {
        assert_eq!(
            XAxis::choose(Some(900.0), Some(3400.0)),
            XAxis::Linear { lo: 0.0, hi: 3468.0 }
        );
        assert_eq!(
            XAxis::choose(Some(2.0), Some(5000.0)),
            XAxis::Log10 { lo_dec: 0, hi_dec: 4 }
        );
        assert_eq!(XAxis::choose(None, None), XAxis::Linear { lo: 0.0, hi: 1.0 });
        assert_eq!(
            XAxis::choose(Some(0.0), Some(0.0)),
            XAxis::Linear { lo: 0.0, hi: 1.0 }
        );
        assert_eq!(fmt_tick(1000.0), "1000");
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(0.0), "0");
    }

    #[test]
    fn cdf_steps_rise_by_one_over_n() {
        let p = cdf_steps(&[1.0, 3.0], 10.0);
        assert_eq!(
            p,
            [
                (1.0, 0.0),
                (1.0, 0.0),
                (1.0, 0.5),
                (3.0, 0.5),
                (3.0, 1.0),
                (10.0, 1.0)
            ]
        );
        assert!(cdf_steps(&[], 10.0).is_empty());
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[7.0], 0.99), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    /// Writes sample charts (for eyeballing, into the temp dir as `vnest-chart-sample*.png`)
    /// and checks each is a PNG of the chart's size.
    #[test]
    fn sample_png() {
        let dir = std::env::temp_dir();
        let path = |name: &str| dir.join(format!("vnest-chart-sample{name}.png"));
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
        write_cdf_png(&path("-empty"), "No data", &[]).unwrap();
        for name in ["", "-log", "-empty"] {
            let file = std::fs::File::open(path(name)).unwrap();
            let info = png::Decoder::new(std::io::BufReader::new(file))
                .read_info()
                .unwrap();
            assert_eq!((info.info().width, info.info().height), (WIDTH, HEIGHT), "{name}");
        }
    }
}
