//! Prints the `MapViolation` CustomResourceDefinition as YAML.
//!
//! Run with:
//!
//! ```sh
//! cargo run -p mapguard-api --bin mapguard-crd > manifests/crd/mapviolations.yaml
//! ```

fn main() {
    print!("{}", mapguard_api::resource::crd_yaml());
}
