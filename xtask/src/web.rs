//! The browser client's release build into `dist/`, the same files `trunk build --release` makes from
//! `frontend/index.html`, without installing trunk or the wasm-bindgen CLI (together ~10 minutes of compiling on a
//! fresh 2-core machine; neither ships prebuilt binaries through a registry this project can reach):
//!
//! 1. cargo builds the `frontend` binary for `wasm32-unknown-unknown` (release profile: LTO, `opt-level = "z"`), in
//!    its own target directory so it can run while the native workspace builds;
//! 2. `wasm-bindgen-cli-support` — the library the wasm-bindgen CLI is made of, pinned to the `wasm-bindgen` crate's
//!    version — writes the JS glue for `--target web`;
//! 3. binaryen's `wasm-opt -Oz` (npm's binaryen 132) shrinks the module;
//! 4. esbuild (npm's, pinned in `tools.rs`) minifies the JS glue, as an ES module whose exports and
//!    `import.meta.url` stay as they are, and the CSS;
//! 5. the CSS and the two outputs get a content hash in their names and `index.html` links them as trunk does
//!    (stylesheet, module preload, wasm preload, each with a `sha384` integrity of the final bytes, and the module
//!    script that starts the app), then every text and wasm asset gets a brotli and a gzip copy.
//!
//! `trunk serve` (with `Trunk.toml`) stays the tool for frontend work; this is the build the tests, the benchmarks,
//! `cargo xtask dev` and the Docker image use.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine as _;
use sha2::{Digest, Sha384};

use crate::tools::Tools;
use crate::{exec, step};

/// The wasm build's own target directory (`cargo chef cook` in the Dockerfile warms the same one).
pub const TARGET_DIR: &str = "target/web";

/// What a first visit may download at most, brotli-compressed: the page, its JS glue, the wasm and the stylesheet.
/// Issue #16 set it; README says where the build stands ("The browser client") and where the bytes go
/// ("Configuration", static files).
pub const FIRST_LOAD_BUDGET: usize = 200 * 1024;

/// What `dist/` holds after a build, for the size report.
#[derive(Debug)]
pub struct Built {
    pub wasm_bytes: usize,
    pub wasm_gzip: usize,
    pub wasm_brotli: usize,
    /// Every asset in `dist/` brotli-compressed, as a first visit downloads them.
    pub first_load: usize,
}

impl Built {
    /// Fails when a first visit would download more than [`FIRST_LOAD_BUDGET`].
    pub fn within_budget(self) -> anyhow::Result<Self> {
        if self.first_load > FIRST_LOAD_BUDGET {
            bail!(
                "a first visit downloads {} bytes (brotli), over the budget of {FIRST_LOAD_BUDGET}: \
                 find what grew with `twiggy top` on the wasm (README's \"Configuration\", static files, says \
                 where the bytes go)",
                self.first_load
            );
        }
        Ok(self)
    }
}

/// Builds the browser client into `<root>/dist`; with `lint`, our crates are compiled by clippy for wasm32 with
/// warnings denied (what `cargo clippy --target wasm32-unknown-unknown -p frontend -- -D warnings` checks).
pub fn build(tools: &Tools, root: &Path, lint: bool) -> anyhow::Result<Built> {
    step(
        "building the browser client (cargo --release for wasm32, wasm-bindgen, wasm-opt -Oz, esbuild --minify) \
         into dist/",
    );
    let page = std::fs::read_to_string(root.join("frontend/index.html"))
        .context("read frontend/index.html")?;
    let links = TrunkLinks::find(&page)?;

    let mut cargo = tools.command("cargo");
    cargo
        .args(["build", "--release", "--locked", "--quiet"])
        .args(["--target", "wasm32-unknown-unknown", "-p", "frontend"])
        .args(["--bin", &links.bin, "--target-dir", TARGET_DIR])
        .current_dir(root);
    if let Some(flags) = remap_cargo_home() {
        cargo.env(REMAP_VAR, flags);
    }
    if lint {
        crate::runner::lint_with_clippy(&mut cargo)?;
    }
    exec(&mut cargo).context("the wasm build failed; see cargo's output above")?;
    let wasm = root
        .join(TARGET_DIR)
        .join("wasm32-unknown-unknown/release")
        .join(format!("{}.wasm", links.bin));

    // The glue and the module, generated under the plain name (the name is written into every import of the
    // module: a hashed one costs ~3 KB) and then named after the module's content, as trunk does. The options are
    // the CLI's defaults for `--target web --no-typescript`, which is how trunk calls it.
    let staging = root.join(TARGET_DIR).join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    let stem = format!(
        "{}-{}",
        links.bin,
        short_hash(&std::fs::read(&wasm).context("read the built wasm")?)
    );
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)?
        .typescript(false)
        .omit_default_module_path(false)
        .out_name(&links.bin)
        .generate(&staging)
        .context("wasm-bindgen failed")?;
    for ext in [".js", "_bg.wasm"] {
        std::fs::rename(
            staging.join(format!("{}{ext}", links.bin)),
            staging.join(format!("{stem}{ext}")),
        )?;
    }
    let module = staging.join(format!("{stem}_bg.wasm"));
    let optimised = staging.join("optimised.wasm");
    exec(
        tools
            .command("wasm-opt")
            .arg(format!("--output={}", optimised.display()))
            .arg(format!("-O{}", links.wasm_opt))
            .arg(&module),
    )
    .context("wasm-opt failed (cargo xtask setup installs binaryen's)")?;
    std::fs::rename(&optimised, &module)?;

    // The glue and the stylesheet minified; their names and integrity come from these final bytes.
    let js_name = format!("{stem}.js");
    let wasm_name = format!("{stem}_bg.wasm");
    let css_min = staging.join("style.min.css");
    minify(
        tools,
        &staging.join(&js_name),
        &staging.join("glue.min.js"),
        true,
    )?;
    minify(
        tools,
        &root.join("frontend").join(&links.css),
        &css_min,
        false,
    )?;
    std::fs::rename(staging.join("glue.min.js"), staging.join(&js_name))?;

    let dist = root.join("dist");
    let _ = std::fs::remove_dir_all(&dist);
    std::fs::create_dir_all(&dist)?;
    let css = std::fs::read(&css_min).context("read the minified CSS")?;
    let css_name = format!(
        "{}-{}.css",
        links.css.trim_end_matches(".css"),
        short_hash(&css)
    );
    std::fs::write(dist.join(&css_name), &css)?;
    for name in [&js_name, &wasm_name] {
        std::fs::copy(staging.join(name), dist.join(name))?;
    }
    let js = std::fs::read(dist.join(&js_name))?;
    let module = std::fs::read(dist.join(&wasm_name))?;
    let html = links.render(
        &page,
        &format!(
            r#"<link rel="stylesheet" href="/{css_name}" integrity="{}"/>"#,
            integrity(&css)
        ),
        &format!(
            r#"<script type="module">
import init, * as bindings from '/{js_name}';
const wasm = await init({{ module_or_path: '/{wasm_name}' }});


window.wasmBindings = bindings;


dispatchEvent(new CustomEvent("TrunkApplicationStarted", {{detail: {{wasm}}}}));

</script>
  <link rel="modulepreload" href="/{js_name}" crossorigin="anonymous" integrity="{}"><link rel="preload" href="/{wasm_name}" crossorigin="anonymous" integrity="{}" as="fetch" type="application/wasm">"#,
            integrity(&js),
            integrity(&module)
        ),
    );
    std::fs::write(dist.join("index.html"), html)?;
    let sizes = compress_assets(&dist, &wasm_name)?;
    let built = Built {
        wasm_bytes: module.len(),
        wasm_gzip: sizes.wasm_gzip,
        wasm_brotli: sizes.wasm_brotli,
        first_load: sizes.brotli,
    };
    let each: Vec<String> = sizes
        .each
        .iter()
        .map(|(kind, bytes)| format!("{kind} {bytes}"))
        .collect();
    step(&format!(
        "browser client built into dist/: wasm {} KB, {} KB gzip, {} KB brotli (what browsers download); \
         a first visit downloads {} KB ({} bytes brotli: {}; budget {} bytes, {} to spare)",
        built.wasm_bytes / 1024,
        built.wasm_gzip / 1024,
        built.wasm_brotli / 1024,
        built.first_load / 1024,
        built.first_load,
        each.join(", "),
        FIRST_LOAD_BUDGET,
        FIRST_LOAD_BUDGET.saturating_sub(built.first_load)
    ));
    Ok(built)
}

/// Minifies one JS module (`js`) or stylesheet with esbuild from `input` into `output`. The glue stays an ES module:
/// esbuild renames only what is local to it, so its exports (`default` is `init`), the imports the wasm calls (keys
/// of an object) and `new URL(…, import.meta.url)` are kept. No `--target`: nothing is rewritten for older browsers,
/// and `--charset=utf8` keeps non-ASCII text as UTF-8 rather than escapes.
fn minify(tools: &Tools, input: &Path, output: &Path, js: bool) -> anyhow::Result<()> {
    let mut esbuild = tools.command("esbuild");
    esbuild
        .arg(input)
        .args(["--minify", "--charset=utf8", "--log-level=warning"])
        .arg(format!("--outfile={}", output.display()));
    if js {
        esbuild.arg("--format=esm");
    }
    exec(&mut esbuild).with_context(|| {
        format!(
            "esbuild could not minify {} (xtask installs npm's esbuild {} into .tools/)",
            input.display(),
            crate::tools::ESBUILD_VERSION
        )
    })
}

/// Cargo's variable for extra wasm32 compiler flags; it adds to `.cargo/config.toml`'s (arrays merge).
const REMAP_VAR: &str = "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS";

/// Panic locations inside dependencies name their files by absolute path under `$CARGO_HOME`, so the wasm (its size
/// included) would depend on where the builder's home is: `/cargo/...` instead makes the module the same on every
/// machine. The Dockerfile sets the variable itself (so its cached dependency layer was built with the same flags),
/// and a value already set is left alone; a home with whitespace in its path is not remapped.
fn remap_cargo_home() -> Option<String> {
    if std::env::var_os(REMAP_VAR).is_some() {
        return None;
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
    let home = home.to_str()?.trim_end_matches('/');
    (!home.is_empty() && !home.contains(char::is_whitespace))
        .then(|| format!("--remap-path-prefix={home}=/cargo"))
}

/// The `data-trunk` links of `frontend/index.html` this build understands: one stylesheet and the Rust app. Any
/// other trunk asset is refused by name rather than silently left out of `dist/`.
#[derive(Debug)]
struct TrunkLinks {
    css_tag: String,
    rust_tag: String,
    css: String,
    bin: String,
    wasm_opt: String,
}

impl TrunkLinks {
    fn find(page: &str) -> anyhow::Result<Self> {
        let mut css = None;
        let mut rust = None;
        let mut rest = page;
        while let Some(at) = rest.find("<link") {
            let tag_len = rest[at..].find('>').context("index.html: unclosed <link")? + 1;
            let tag = &rest[at..at + tag_len];
            rest = &rest[at + tag_len..];
            if !tag.contains("data-trunk") {
                continue;
            }
            match attribute(tag, "rel").as_deref() {
                Some("css") => css = Some(tag.to_owned()),
                Some("rust") => rust = Some(tag.to_owned()),
                other => bail!(
                    "index.html: a trunk asset with rel={other:?}, which cargo xtask frontend does not build \
                     (xtask/src/web.rs builds one rel=\"css\" and one rel=\"rust\"): {tag}"
                ),
            }
        }
        let css_tag = css.context("index.html has no <link data-trunk rel=\"css\">")?;
        let rust_tag = rust.context("index.html has no <link data-trunk rel=\"rust\">")?;
        Ok(Self {
            css: attribute(&css_tag, "href").context("the css link has no href")?,
            bin: attribute(&rust_tag, "data-bin").unwrap_or_else(|| "frontend".into()),
            wasm_opt: attribute(&rust_tag, "data-wasm-opt").unwrap_or_else(|| "z".into()),
            css_tag,
            rust_tag,
        })
    }

    /// The page with the stylesheet link in place of the css tag, the rust tag removed and `head_end` (the start
    /// script and preloads) at the end of `<head>`, laid out as trunk lays it out.
    fn render(&self, page: &str, stylesheet: &str, head_end: &str) -> String {
        let page = page
            .replacen(&self.css_tag, stylesheet, 1)
            .replacen(&self.rust_tag, "", 1);
        match page.find("</head>") {
            Some(end) => format!(
                "{}{head_end}{}",
                page[..end].trim_end_matches(' '),
                &page[end..]
            ),
            None => page,
        }
    }
}

/// The value of `name="…"` in one tag.
fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].to_owned())
}

/// 16 hex digits of the content's SHA-384: a name that changes whenever the content does.
fn short_hash(bytes: &[u8]) -> String {
    Sha384::digest(bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A subresource-integrity value, as trunk writes it.
fn integrity(bytes: &[u8]) -> String {
    format!(
        "sha384-{}",
        base64::engine::general_purpose::STANDARD.encode(Sha384::digest(bytes))
    )
}

/// Writes a brotli (`.br`) and a gzip (`.gz`) copy next to every text or wasm asset in `dist`, at the highest
/// levels (done once at build time); the replica serves them to browsers that accept them.
fn compress_assets(dist: &Path, wasm: &str) -> anyhow::Result<Compressed> {
    let mut sizes = Compressed::default();
    for entry in std::fs::read_dir(dist).context("read dist/")? {
        let path = entry?.path();
        let compressible = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "wasm" | "js" | "css" | "html" | "svg" | "json"));
        if !compressible {
            continue;
        }
        let raw = std::fs::read(&path)?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&raw)?;
        let gz = gz.finish()?;
        let mut br = Vec::new();
        {
            let mut writer = brotli::CompressorWriter::new(&mut br, 64 * 1024, 11, 22);
            writer.write_all(&raw)?;
        }
        let with = |ext: &str| {
            let mut name = path.clone().into_os_string();
            name.push(ext);
            PathBuf::from(name)
        };
        std::fs::write(with(".gz"), &gz)?;
        std::fs::write(with(".br"), &br)?;
        if path.file_name().is_some_and(|n| n == wasm) {
            (sizes.wasm_gzip, sizes.wasm_brotli) = (gz.len(), br.len());
        }
        sizes.brotli += br.len();
        let kind = path
            .extension()
            .map_or_else(String::new, |e| e.to_string_lossy().into_owned());
        sizes.each.push((kind, br.len()));
    }
    sizes.each.sort();
    Ok(sizes)
}

/// Compressed sizes of `dist/`.
#[derive(Debug, Default)]
struct Compressed {
    wasm_gzip: usize,
    wasm_brotli: usize,
    /// All assets, brotli.
    brotli: usize,
    /// Each asset's kind (its extension) and brotli size.
    each: Vec<(String, usize)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"<html>
  <head>
    <title>x</title>
    <link data-trunk rel="css" href="style.css" />
    <link data-trunk rel="rust" data-bin="frontend" data-wasm-opt="z" />
  </head>
</html>"#;

    #[test]
    fn a_first_visit_over_the_budget_fails_the_build_check() {
        let built = |first_load| Built {
            wasm_bytes: 0,
            wasm_gzip: 0,
            wasm_brotli: 0,
            first_load,
        };
        assert!(built(FIRST_LOAD_BUDGET).within_budget().is_ok());
        let err = built(FIRST_LOAD_BUDGET + 1).within_budget().unwrap_err();
        assert!(err.to_string().contains("over the budget"), "{err}");
    }

    #[test]
    fn the_trunk_links_become_a_stylesheet_a_module_script_and_preloads() {
        let links = TrunkLinks::find(PAGE).unwrap();
        assert_eq!(
            (
                links.css.as_str(),
                links.bin.as_str(),
                links.wasm_opt.as_str()
            ),
            ("style.css", "frontend", "z")
        );
        let html = links.render(PAGE, "<link rel=\"stylesheet\"/>", "<script></script>");
        assert_eq!(
            html,
            "<html>\n  <head>\n    <title>x</title>\n    <link rel=\"stylesheet\"/>\n    \n<script></script></head>\n</html>"
        );
    }

    #[test]
    fn an_asset_this_build_does_not_make_is_refused() {
        let page = PAGE.replace(
            "</head>",
            "<link data-trunk rel=\"copy-dir\" href=\"img\"/></head>",
        );
        let err = TrunkLinks::find(&page).unwrap_err().to_string();
        assert!(err.contains("copy-dir"), "{err}");
    }

    #[test]
    fn names_carry_sixteen_hex_digits_of_the_content() {
        let (a, b) = (short_hash(b"one"), short_hash(b"two"));
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        assert!(integrity(b"x").starts_with("sha384-"));
    }
}
