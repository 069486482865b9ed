//! Text for the pictures: a plotters backend that draws shapes with plotters'
//! bitmap backend and text itself, with ab_glyph and DejaVu Sans embedded in
//! the binary.
//!
//! Why not plotters' own text? Its default `ttf` feature asks the system for
//! fonts through fontconfig, which servers and CI machines often lack. Its
//! `ab_glyph` feature takes embedded font bytes, but (in 0.3.7) drops each
//! glyph's side bearing and rounds every pen position down, so letters collide
//! ("Tr") or drift apart ("traini ng"), and it centres text vertically about a
//! fifth of its size too high. Drawing the text here fixes all three in one
//! place, for every label plotters lays out.
//!
//! Why DejaVu Sans from the `dejavu` crate? It is a complete, widely used open
//! font (Bitstream Vera licence, ✓ and ✗ included), and the crate ships it as
//! plain bytes, so it arrives with `cargo build`: nothing is downloaded or
//! looked up at run time.

use std::sync::OnceLock;

use ab_glyph::{Font, FontRef, GlyphId, PxScale, ScaleFont, point};
use plotters::prelude::BitMapBackend;
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{
    BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingBackend, DrawingErrorKind,
    FontStyle,
};

/// The regular and the bold face.
fn faces() -> &'static [FontRef<'static>; 2] {
    static FACES: OnceLock<[FontRef<'static>; 2]> = OnceLock::new();
    FACES.get_or_init(|| {
        let parse =
            |bytes| FontRef::try_from_slice(bytes).expect("the embedded DejaVu font parses");
        [parse(dejavu::sans::regular()), parse(dejavu::sans::bold())]
    })
}

fn face(bold: bool) -> &'static FontRef<'static> {
    &faces()[usize::from(bold)]
}

/// Lays `text` out on one line at pixel size `size` (the height from the
/// highest ascender to the lowest descender, as in plotters): calls `glyph`
/// with each glyph id and its pen position, and returns the line's width.
fn layout(text: &str, size: f32, bold: bool, mut glyph: impl FnMut(GlyphId, f32)) -> f32 {
    let font = face(bold).as_scaled(PxScale::from(size));
    let mut pen = 0.0;
    let mut previous = None;
    for c in text.chars() {
        let id = font.glyph_id(c);
        if let Some(before) = previous {
            pen += font.kern(before, id);
        }
        glyph(id, pen);
        pen += font.h_advance(id);
        previous = Some(id);
    }
    pen
}

/// Width in pixels of `text` at pixel size `size`.
pub(crate) fn text_width(text: &str, size: f64, bold: bool) -> u32 {
    layout(text, size as f32, bold, |_, _| {}).ceil() as u32
}

/// plotters' bitmap backend over an RGB buffer, with text drawn by [`layout`].
pub(crate) struct TextBackend<'a>(pub BitMapBackend<'a>);

type BackendResult<E> = Result<(), DrawingErrorKind<E>>;

impl<'a> DrawingBackend for TextBackend<'a> {
    type ErrorType = <BitMapBackend<'a> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> BackendResult<Self::ErrorType> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> BackendResult<Self::ErrorType> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> BackendResult<Self::ErrorType> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> BackendResult<Self::ErrorType> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> BackendResult<Self::ErrorType> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> BackendResult<Self::ErrorType> {
        self.0.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> BackendResult<Self::ErrorType> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> BackendResult<Self::ErrorType> {
        self.0.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> BackendResult<Self::ErrorType> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn estimate_text_size<S: BackendTextStyle>(
        &self,
        text: &str,
        style: &S,
    ) -> Result<(u32, u32), DrawingErrorKind<Self::ErrorType>> {
        Ok((
            text_width(text, style.size(), is_bold(style)),
            style.size().ceil() as u32,
        ))
    }

    /// Anchors: `Left`/`Center`/`Right` are the ends and middle of the line;
    /// `Top` is the top of the ascenders, `Bottom` the bottom of the
    /// descenders, and `Center` the middle of the capitals and digits, which
    /// is where the eye puts the middle of a label.
    fn draw_text<S: BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> BackendResult<Self::ErrorType> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        let (size, bold) = (style.size() as f32, is_bold(style));
        let font = face(bold).as_scaled(PxScale::from(size));
        let width = layout(text, size, bold, |_, _| {});
        let x = match style.anchor().h_pos {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let cap_height = font
            .outline_glyph(font.scaled_glyph('H'))
            .map_or(0.0, |h| -h.px_bounds().min.y);
        let baseline = match style.anchor().v_pos {
            VPos::Top => font.ascent(),
            VPos::Center => cap_height / 2.0,
            VPos::Bottom => font.descent(),
        };
        let transform = style.transform();
        let mut result = Ok(());
        layout(text, size, bold, |id, pen| {
            let Some(outline) = font
                .outline_glyph(id.with_scale_and_position(font.scale(), point(x + pen, baseline)))
            else {
                return;
            };
            let bounds = outline.px_bounds();
            outline.draw(|gx, gy, coverage| {
                let (dx, dy) = transform.transform(
                    bounds.min.x as i32 + gx as i32,
                    bounds.min.y as i32 + gy as i32,
                );
                let ink = BackendColor {
                    alpha: color.alpha * f64::from(coverage),
                    rgb: color.rgb,
                };
                if result.is_ok() && coverage > 0.0 {
                    result = self.0.draw_pixel((pos.0 + dx, pos.1 + dy), ink);
                }
            });
        });
        result
    }
}

fn is_bold<S: BackendTextStyle>(style: &S) -> bool {
    matches!(style.style(), FontStyle::Bold)
}
