# mamba: `make` builds ./mamba (with the CUDA engine when nvcc is found), `make cpu` forces a
# CPU-only build, `make test` installs what is missing and runs the suite (plain and under
# AddressSanitizer + UndefinedBehaviorSanitizer), `make test-gpu` runs the GPU suite, `make fuzz`
# builds the libFuzzer targets of tests/fuzz/ (clang; `make test` replays and briefly runs them).
CC ?= cc
CXX ?= c++
# The CUDA engine is built when nvcc is found: $(CUDA_HOME)/bin/nvcc when CUDA_HOME is set and
# has one, else the nvcc on the PATH (CUDA_HOME is then the folder above its bin/). Without nvcc
# the engine is CPU-only, with a notice; CUDA_HOME= (as `make cpu` passes) is CPU-only quietly.
CUDA_HOME_GIVEN := $(CUDA_HOME)
ifneq ($(CUDA_HOME),)
  ifneq ($(wildcard $(CUDA_HOME)/bin/nvcc),)
    NVCC ?= $(CUDA_HOME)/bin/nvcc
  else
    CUDA_FROM_PATH = 1
  endif
else ifeq ($(origin CUDA_HOME),undefined)
  CUDA_FROM_PATH = 1
endif
ifdef CUDA_FROM_PATH
  NVCC ?= nvcc
  override CUDA_HOME := $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC) 2>/dev/null))
  # said once (not again by the sub-makes), and not for goals that build no engine
  ifeq ($(CUDA_HOME)$(MAKELEVEL),0)
    ifneq ($(filter-out cpu clean deps test-gpu,$(or $(MAKECMDGOALS),all)),)
      $(info nvcc not found$(if $(CUDA_HOME_GIVEN), in CUDA_HOME=$(CUDA_HOME_GIVEN) nor,) on the PATH: building the CPU-only engine)
    endif
  endif
endif
CUDA_ARCH ?= -arch=sm_90

OPT ?= -O3 -march=native
CFLAGS ?= $(OPT) -g -Wall -Wextra -Wshadow -fopenmp
CFLAGS += -std=c11
CXXFLAGS ?= $(OPT) -g -Wall -Wextra
CXXFLAGS += -std=c++17
# -lzip: torch.save files (torch_archive.c) are zip archives, and libzip is a well-kept zip library
# (zip64, deflate, CRC and consistency checks), safer than a zip reader of our own
# -ledit: `mamba chat` reads its lines on a terminal with libedit (Debian's BSD line editor:
# editing and history, under a BSD licence, where GNU readline's GPL would bind the binary)
LDLIBS = -lsentencepiece -lcjson -lutf8proc -lpcre2-8 -lzip -ledit -lstdc++ -lm
SANITIZE = -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -fopenmp

# the host program, one concern a file (README: how the code is organised); tests/fuzz/mamba_unity.h
# lists the same files for the fuzz targets
HOST_SRC = mamba.c util.c options.c model.c cpu.c cpu_quant.c pool.c sampler.c engine.c batch.c convert.c torch_archive.c bench.c tokenizer.c \
	state.c generate.c chat.c
HEADERS = mamba.h model.h gpu.h tokenizer.h tokenizer_unicode.h sp_wrapper.h torch_archive.h
GPU_HEADERS = gpu.h gpu_internal.cuh gpu_device.cuh gpu_step.cuh model.h

ifneq ($(CUDA_HOME),)
  GPU_OBJ = build/kernels.o build/prefill.o build/mamba2.o build/mamba2_pass.o build/gpu_bench.o
  GPU_HOST_SRC = engine_gpu.c bench_gpu.c
  GPU_FLAGS = -DMAMBA_CUDA
  # the CUDA runtime linked statically; at run time the GPU engine needs the driver and cuBLAS
  # (opened with dlopen, found through this rpath or LD_LIBRARY_PATH), else mamba runs on the CPU
  GPU_LIBS = -L$(CUDA_HOME)/lib64 -L$(CUDA_HOME)/targets/x86_64-linux/lib -lcudart_static -ldl -lrt -lpthread \
	-Wl,-rpath,$(CUDA_HOME)/lib64
endif

.PHONY: all cpu test test-gpu devlibs asan deps clean fuzz
all: mamba

mamba: $(HOST_SRC) $(GPU_HOST_SRC) $(HEADERS) build/sp_wrapper.o $(GPU_OBJ)
	$(CC) $(CFLAGS) $(GPU_FLAGS) -o $@ $(HOST_SRC) $(GPU_HOST_SRC) build/sp_wrapper.o $(GPU_OBJ) $(LDLIBS) $(GPU_LIBS)

# -B: rebuild even when a CUDA build of ./mamba is newer than its sources
cpu:
	$(MAKE) -B CUDA_HOME= mamba

build/sp_wrapper.o: sp_wrapper.cc sp_wrapper.h | build
	$(CXX) $(CXXFLAGS) -c -o $@ sp_wrapper.cc

build/%.o: %.cu $(GPU_HEADERS) | build
	$(NVCC) $(CUDA_ARCH) -O3 -std=c++17 -Xcompiler -Wall -c -o $@ $<

# each CUDA kernel against a CPU reference, and its micro-benchmark (run by tests/gpu.sh); Mamba-2's
# passes against a recurrence written in the test
build/test_kernels build/test_mamba2_pass: build/%: tests/kernels/%.cu tests/kernels/kernel_test.cuh kernels.cu prefill.cu mamba2.cu mamba2_pass.cu gpu_bench.cu $(GPU_HEADERS) | build
	$(NVCC) $(CUDA_ARCH) -O3 -std=c++17 -I. -o $@ $< -ldl

# The sanitized build is CPU-only: ASan and the CUDA runtime do not mix.
build/asan/sp_wrapper.o: sp_wrapper.cc sp_wrapper.h
	mkdir -p build/asan
	$(CXX) -std=c++17 $(SANITIZE) -c -o $@ sp_wrapper.cc

mamba-asan: $(HOST_SRC) $(HEADERS) build/asan/sp_wrapper.o
	$(CC) -std=c11 -Wall -Wextra $(SANITIZE) -o $@ $(HOST_SRC) build/asan/sp_wrapper.o $(LDLIBS)

tests/tok_check: tests/tok_check.c tokenizer.c $(HEADERS) build/sp_wrapper.o
	$(CC) $(CFLAGS) -I. -o $@ tests/tok_check.c tokenizer.c build/sp_wrapper.o $(LDLIBS)

tests/tok_check-asan: tests/tok_check.c tokenizer.c $(HEADERS) build/asan/sp_wrapper.o
	$(CC) -std=c11 -Wall -Wextra $(SANITIZE) -I. -o $@ tests/tok_check.c tokenizer.c build/asan/sp_wrapper.o $(LDLIBS)

# prints what torch_archive.c reads from a torch.save file (tests/test_torch_archive.sh)
tests/torch_dump: tests/torch_dump.c torch_archive.c torch_archive.h model.h
	$(CC) $(CFLAGS) -I. -o $@ tests/torch_dump.c torch_archive.c -lzip

tests/torch_dump-asan: tests/torch_dump.c torch_archive.c torch_archive.h model.h
	$(CC) -std=c11 -Wall -Wextra $(SANITIZE) -I. -o $@ tests/torch_dump.c torch_archive.c -lzip

tests/cmp_logits: tests/cmp_logits.c
	$(CC) -O2 -std=c11 -Wall -Wextra -o $@ $< -lm

build:
	mkdir -p build

# libFuzzer targets (tests/fuzz/, see tests/fuzz/README.md), built with clang under ASan + UBSan
# into build/fuzz/; tests/test_fuzz.sh replays their corpora and runs each for a short while.
FUZZ_CXX ?= clang++
FUZZ_FLAGS = -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined \
	-Dmain=mamba_main -Wall -Wextra -Wno-unknown-pragmas
FUZZ_TARGETS = checkpoint safetensors config tokenizer_json bpe_encode decode sentencepiece cli torch_archive state
FUZZ_BINS = $(FUZZ_TARGETS:%=build/fuzz/fuzz_%)

fuzz: $(FUZZ_BINS)

build/fuzz/sp_wrapper.o: sp_wrapper.cc sp_wrapper.h
	mkdir -p build/fuzz
	$(FUZZ_CXX) -std=c++17 $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link -c -o $@ sp_wrapper.cc

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz_common.h tests/fuzz/mamba_unity.h tests/fuzz/exercise_tokenizer.h $(HOST_SRC) $(HEADERS) build/fuzz/sp_wrapper.o
	$(FUZZ_CXX) $(FUZZ_FLAGS) -fsanitize=fuzzer -o $@ -x c -std=c11 $< tokenizer.c -x none build/fuzz/sp_wrapper.o $(LDLIBS)

# the Debian packages the build and the tests need (./run.sh installs only the build's)
deps:
	@bash tests/deps.sh test

test: deps
	$(MAKE) mamba mamba-asan tests/cmp_logits tests/tok_check tests/tok_check-asan tests/torch_dump tests/torch_dump-asan fuzz
	MAMBA_BINARIES="./mamba ./mamba-asan" bash tests/run.sh

# The GPU machine lacks the Debian libraries: `make devlibs` (here) builds .devlibs/mamba for any
# x86-64-v3 CPU, with tests/cmp_logits and the shared libraries it needs (all but glibc's and
# the driver's) beside it, found through an rpath of $ORIGIN (cuBLAS, opened at run time, comes
# from the GPU machine's CUDA toolkit); tests/gpu.sh runs it from there.
devlibs: $(GPU_OBJ)
	rm -rf .devlibs
	mkdir -p .devlibs
	$(CXX) -O3 -march=x86-64-v3 -g -std=c++17 -c -o .devlibs/sp_wrapper.o sp_wrapper.cc
	$(CC) -O3 -march=x86-64-v3 -g -fopenmp -std=c11 $(GPU_FLAGS) -o .devlibs/mamba $(HOST_SRC) $(GPU_HOST_SRC) .devlibs/sp_wrapper.o \
		$(GPU_OBJ) $(LDLIBS) $(GPU_LIBS) -Wl,--disable-new-dtags,-rpath,'$$ORIGIN'
	$(MAKE) tests/cmp_logits
	cp tests/cmp_logits .devlibs/
	rm .devlibs/sp_wrapper.o
	ldd .devlibs/mamba | awk '$$3 ~ /^\// {print $$3}' | grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*)\.so' | xargs -r cp -L -t .devlibs/

test-gpu:
	bash tests/gpu.sh

clean:
	rm -rf build mamba mamba-asan tests/cmp_logits tests/tok_check tests/tok_check-asan tests/torch_dump tests/torch_dump-asan
