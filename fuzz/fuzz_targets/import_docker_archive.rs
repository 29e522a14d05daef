//! `image import` of a hostile `docker save` archive: a structured image (so the importer's
//! deep paths are reached) with damage (wrong digests, missing files, symlinks, escaping
//! names, raw JSON), or raw archive bytes. Checks: see `bulkhead_fuzz::import_check`.
#![no_main]

use arbitrary::Arbitrary;
use bulkhead_fuzz::image_spec::{self, ImageSpec, Node};
use bulkhead_fuzz::import_check::Scene;
use bulkhead_fuzz::tarb::{self, Entry, Kind, Name};
use bulkhead_images::import;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input<'a> {
    Spec(ImageSpec, Option<String>),
    Entries(Vec<Entry>, Option<String>),
    Raw(&'a [u8]),
}

#[derive(Arbitrary, Debug)]
struct Run<'a> {
    /// An image of the same name is replaced rather than refused.
    replace: bool,
    input: Input<'a>,
}

fn entry(name: &str, kind: Kind) -> Entry {
    Entry {
        name: Name::Bytes(name.as_bytes().to_vec()),
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        pax: Vec::new(),
    }
}

fuzz_target!(|run: Run| {
    let (bytes, name) = match run.input {
        Input::Spec(spec, name) => {
            let entries: Vec<Entry> = image_spec::docker_archive(&spec)
                .into_iter()
                .map(|(p, n)| match n {
                    Node::File(d) => entry(&p, Kind::File(d)),
                    Node::Symlink(t) => entry(&p, Kind::Symlink(Name::Bytes(t.into_bytes()))),
                })
                .collect();
            (tarb::build(&entries, false), name)
        }
        Input::Entries(e, name) => (tarb::build(&e, false), name),
        Input::Raw(r) => (r.to_vec(), None),
    };
    let scene = Scene::new(|p| std::fs::write(p, &bytes).expect("archive"));
    let store = scene.store();
    let result = import::docker_archive(&store, &scene.input(), name.as_deref(), run.replace);
    scene.check(&store, result.as_deref().ok());
});
