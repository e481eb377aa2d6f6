//! The JIT: one Cranelift `JITModule` for the host CPU, and handles to the functions compiled
//! into it.
//!
//! A [`Jit`] is cheap to clone and may be shared between threads: the module sits behind a
//! mutex, so compiling is serialized while running compiled code never takes the lock. Every
//! [`CompiledFunction`] holds a reference to the module's owner, and the code memory is freed
//! only when the `Jit` and every function compiled by it are gone. That is what makes a function
//! pointer obtained from a live handle safe to call.
//!
//! The settings are the ones that mattered when measured on this kind of machine (see
//! `shared/design.md`): the ISA comes from `cranelift_native::builder()`, which turns on
//! AVX/AVX2/FMA when the CPU has them (without them an f32x4 `fma` becomes four `fmaf`
//! libcalls); functions are aligned to 64 bytes, because the default 1-byte alignment made the
//! same loop swing between fast and slow runs; `opt_level` is `speed`; and the verifier, which
//! doubles compile time, runs in tests and debug builds only.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cranelift_codegen::ir::{Function, Signature, UserFuncName};
use cranelift_codegen::isa::CallConv;
use cranelift_codegen::settings::{self, Configurable};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{FuncId, Module, ModuleError};

use super::CodegenError;

/// How the JIT compiles.
#[derive(Clone, Debug)]
pub struct JitOptions {
    /// Run Cranelift's IR verifier on every function (on in tests; it doubles compile time).
    pub verify: bool,
    /// Cranelift's optimization level.
    pub opt_level: OptLevel,
    /// Keep each function's CLIF text and disassembly on its [`CompiledFunction`] (for
    /// `--emit kernels` and for reading what the code generator did).
    pub keep_listing: bool,
    /// Let elementwise kernels call the wide-vector exp, sigmoid and tanh of
    /// `vector_library.rs` (when the CPU has AVX2 or AVX-512) instead of computing them in
    /// f32x4; the results are the same bits either way, only faster.
    pub vector_library: bool,
}

impl Default for JitOptions {
    /// Verifier on in debug builds, off in release builds; no listings.
    fn default() -> Self {
        JitOptions {
            verify: cfg!(debug_assertions),
            opt_level: OptLevel::Speed,
            keep_listing: false,
            vector_library: true,
        }
    }
}

/// Cranelift's `opt_level` setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptLevel {
    /// No e-graph optimization: instructions stay where the generator put them.
    None,
    /// The e-graph (GVN, LICM, rewrites, rematerialization).
    Speed,
}

/// A Rust (or C) function that generated code may call by name.
#[derive(Clone, Copy, Debug)]
pub struct ExternalSymbol {
    pub name: &'static str,
    pub address: *const u8,
}

/// The JIT compiler: owns the code memory of everything it compiles.
#[derive(Clone)]
pub struct Jit {
    owner: Arc<ModuleOwner>,
    call_conv: CallConv,
    options: JitOptions,
}

/// A function compiled by a [`Jit`], with the code memory kept alive by this handle.
#[derive(Clone)]
pub struct CompiledFunction {
    code: *const u8,
    name: String,
    compile_time: Duration,
    code_size: usize,
    listing: Option<String>,
    _owner: Arc<ModuleOwner>,
}

// SAFETY: the code a `CompiledFunction` points at is finalized (read-only, executable) and never
// changes afterwards; the pointer is only an address, and the memory behind it lives as long as
// the `Arc<ModuleOwner>` the handle holds. Sharing or sending the address between threads is
// therefore as safe as sharing a `&'static [u8]`.
unsafe impl Send for CompiledFunction {}
unsafe impl Sync for CompiledFunction {}

impl Jit {
    /// A JIT for the host CPU that can call no external functions except those the process
    /// exports (`expf`, `memcpy`...), which Cranelift finds with `dlsym`.
    pub fn new(options: &JitOptions) -> Result<Jit, CodegenError> {
        // SAFETY: there are no symbols to vouch for.
        unsafe { Jit::with_symbols(options, &[]) }
    }

    /// A JIT whose generated code can call each of `symbols` by name (for example `nnc_sgemm`).
    ///
    /// # Safety
    /// Each address must be a function with the C calling convention that stays valid for the
    /// life of the process, and generated code must declare it with its true signature: the JIT
    /// cannot check either, and a mismatch is undefined behavior when the code runs.
    pub unsafe fn with_symbols(
        options: &JitOptions,
        symbols: &[ExternalSymbol],
    ) -> Result<Jit, CodegenError> {
        let isa = build_host_isa(options)?;
        let call_conv = isa.default_call_conv();
        let mut builder = JITBuilder::with_isa(isa, cranelift_module::default_libcall_names());
        for symbol in symbols {
            builder.symbol(symbol.name, symbol.address);
        }
        let module = JITModule::new(builder);
        Ok(Jit {
            owner: Arc::new(ModuleOwner {
                module: Mutex::new(Some(module)),
            }),
            call_conv,
            options: options.clone(),
        })
    }

    /// The calling convention of `extern "C"` functions on this host.
    pub fn call_conv(&self) -> CallConv {
        self.call_conv
    }

    /// The options this JIT was made with.
    pub fn options(&self) -> &JitOptions {
        &self.options
    }

    /// An empty signature in the host's C calling convention, to push parameters onto.
    pub fn make_signature(&self) -> Signature {
        Signature::new(self.call_conv)
    }

    /// Compiles one function: `build_body` receives a builder positioned nowhere (it creates
    /// the entry block itself) and the module (to declare the external functions it calls,
    /// with `declare_function` + `declare_func_in_func`). The builder is finalized here.
    /// `name` is for listings and error messages only; functions never clash by name.
    pub fn compile_function<F>(
        &self,
        name: &str,
        signature: Signature,
        build_body: F,
    ) -> Result<CompiledFunction, CodegenError>
    where
        F: FnOnce(&mut FunctionBuilder<'_>, &mut JITModule) -> Result<(), CodegenError>,
    {
        let mut guard = self
            .owner
            .module
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let module = guard
            .as_mut()
            .expect("internal error (a bug in nnc): the JIT module is gone while a Jit lives");
        // The clock starts once the lock is held, so time spent waiting for another thread's
        // compile is not counted as this function's compile time.
        let started = Instant::now();
        let mut context = module.make_context();
        context.func = Function::with_name_signature(UserFuncName::default(), signature);
        context.set_disasm(self.options.keep_listing);
        let mut builder_context = FunctionBuilderContext::new();
        let mut builder = FunctionBuilder::new(&mut context.func, &mut builder_context);
        build_body(&mut builder, module)?;
        builder.finalize(module.target_config());
        let clif_text = self
            .options
            .keep_listing
            .then(|| context.func.display().to_string());

        let function_id = define(module, &mut context, name)?;
        let code_size = context
            .compiled_code()
            .map_or(0, |compiled| compiled.code_buffer().len());
        let disassembly = context
            .compiled_code()
            .and_then(|compiled| compiled.vcode.clone());
        module.clear_context(&mut context);
        module
            .finalize_definitions()
            .map_err(|error| cranelift_error(name, error.to_string()))?;
        let code = module.get_finalized_function(function_id);
        drop(guard);

        Ok(CompiledFunction {
            code,
            name: name.to_string(),
            compile_time: started.elapsed(),
            code_size,
            listing: clif_text.map(|clif| listing(&clif, disassembly.as_deref())),
            _owner: Arc::clone(&self.owner),
        })
    }
}

impl CompiledFunction {
    /// The address of the function's first instruction. It is valid while this handle (or a
    /// clone of it) lives; call it only through a function pointer of the signature it was
    /// compiled with.
    pub fn code_address(&self) -> *const u8 {
        self.code
    }

    /// The name given at compile time.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Wall time from the start of IR construction to finalized machine code.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Size of the machine code in bytes.
    pub fn code_size(&self) -> usize {
        self.code_size
    }

    /// The CLIF text and the disassembly, when the JIT was asked to keep them.
    pub fn listing(&self) -> Option<&str> {
        self.listing.as_deref()
    }
}

/// Owns the module; frees its code memory when the last `Jit` or `CompiledFunction` goes.
struct ModuleOwner {
    module: Mutex<Option<JITModule>>,
}

impl Drop for ModuleOwner {
    fn drop(&mut self) {
        let module = self
            .module
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(module) = module {
            // SAFETY: every handle to code in this module holds an `Arc` to this owner, and
            // this is the owner's drop, so no handle (and no running call through one) is left.
            unsafe { module.free_memory() };
        }
    }
}

fn build_host_isa(
    options: &JitOptions,
) -> Result<cranelift_codegen::isa::OwnedTargetIsa, CodegenError> {
    let mut flags = settings::builder();
    let verifier = if options.verify { "true" } else { "false" };
    let opt_level = match options.opt_level {
        OptLevel::None => "none",
        OptLevel::Speed => "speed",
    };
    let settings_to_apply = [
        ("opt_level", opt_level),
        ("enable_verifier", verifier),
        ("log2_min_function_alignment", "6"),
        // cranelift-jit patches absolute addresses, so code is not position independent, and
        // calls to libcalls must reach anywhere in the address space.
        ("is_pic", "false"),
        ("use_colocated_libcalls", "false"),
    ];
    for (name, value) in settings_to_apply {
        flags.set(name, value).map_err(|error| {
            CodegenError::UnsupportedHost(format!(
                "cannot set cranelift flag {name}={value}: {error}"
            ))
        })?;
    }
    let isa_builder = cranelift_native::builder()
        .map_err(|message| CodegenError::UnsupportedHost(message.to_string()))?;
    isa_builder
        .finish(settings::Flags::new(flags))
        .map_err(|error| CodegenError::UnsupportedHost(error.to_string()))
}

/// Declares and compiles the function in `context`, turning Cranelift's errors into ours with
/// the verifier's annotated listing when there is one.
fn define(
    module: &mut JITModule,
    context: &mut Context,
    name: &str,
) -> Result<FuncId, CodegenError> {
    let signature = context.func.signature.clone();
    let function_id = module
        .declare_anonymous_function(&signature)
        .map_err(|error| cranelift_error(name, error.to_string()))?;
    match module.define_function(function_id, context) {
        Ok(()) => Ok(function_id),
        Err(ModuleError::Compilation(error)) => Err(cranelift_error(
            name,
            cranelift_codegen::print_errors::pretty_error(&context.func, error),
        )),
        Err(error) => Err(cranelift_error(name, error.to_string())),
    }
}

fn cranelift_error(function: &str, message: String) -> CodegenError {
    CodegenError::Cranelift {
        function: function.to_string(),
        message,
    }
}

fn listing(clif: &str, disassembly: Option<&str>) -> String {
    match disassembly {
        Some(disassembly) => format!("{clif}\n; disassembly\n{disassembly}"),
        None => clif.to_string(),
    }
}
