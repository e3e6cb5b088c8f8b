# pipenem — build, test and run.
# Knobs: CUDA=auto|yes|no, DEBUG=1, SANITIZE=address,undefined, BUILD=dir, CC=clang, JOBS=N.
# Sources are found by folder, so a new module file needs no edit here.

CC       ?= cc
CUDA     ?= auto
DEBUG    ?= 0
SANITIZE ?=
BUILD    ?= build$(if $(SANITIZE),-san)
# The build behind test, run, bench and fuzz compiles on every CPU unless make was given -j
JOBS     ?= $(shell nproc 2>/dev/null || echo 1)
SUBJOBS   = $(if $(findstring -j,$(MAKEFLAGS))$(findstring jobserver,$(MAKEFLAGS)),,-j$(JOBS))

PKGS := ucx libnl-route-3.0 openblas cmocka

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -fopenmp -MMD -MP -I.
ifeq ($(DEBUG),1)
CFLAGS_OPT := -O0 -g3
else
CFLAGS_OPT := -O2 -g
endif
ifneq ($(SANITIZE),)
CFLAGS_OPT += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS    += -fsanitize=$(SANITIZE)
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
override CFLAGS  += $(CFLAGS_BASE) $(CFLAGS_OPT) $(PKG_CFLAGS)
override LDLIBS  += $(PKG_LIBS) -lcsv -fopenmp -lm -lpthread

# CUDA: objects from models/*.cu only where nvcc exists (CUDA=auto) or is demanded.
# CUDA_HOME is where nvcc lives; the architectures follow nvcc's major version the way
# nccl-tests picks them (CUDA 13 dropped Volta: V100/p3 needs a CUDA 12 toolkit), and
# GENCODE= overrides them (CI: GENCODE=-arch=sm_80, one architecture). cudart is linked
# statically; cuBLAS is found beside it and dlopen'ed at the first cuda stage through the
# rpath (so no binary maps it unless it computes on a GPU).
NVCC ?= $(shell command -v nvcc 2>/dev/null || ls /usr/local/cuda/bin/nvcc 2>/dev/null)
ifeq ($(CUDA),no)
HAVE_CUDA :=
else ifneq ($(NVCC),)
HAVE_CUDA := 1
else ifeq ($(CUDA),yes)
$(error CUDA=yes but nvcc was not found; install the CUDA toolkit or use CUDA=no)
endif
CUDA_SRCS := $(if $(HAVE_CUDA),$(wildcard models/*.cu))
CUDA_LDLIBS :=
ifneq ($(CUDA_SRCS),)
CUDA_HOME  ?= $(realpath $(dir $(realpath $(NVCC)))..)
NVCC_MAJOR := $(shell $(NVCC) --version | sed -n 's/.*release \([0-9]*\)\..*/\1/p')
GENCODE_12 := -gencode=arch=compute_70,code=sm_70 -gencode=arch=compute_80,code=sm_80 \
              -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90
GENCODE_13 := -gencode=arch=compute_75,code=sm_75 -gencode=arch=compute_80,code=sm_80 \
              -gencode=arch=compute_90,code=sm_90 -gencode=arch=compute_90,code=compute_90
GENCODE_11 := -gencode=arch=compute_70,code=sm_70 -gencode=arch=compute_80,code=sm_80 \
              -gencode=arch=compute_80,code=compute_80
GENCODE    ?= $(or $(GENCODE_$(NVCC_MAJOR)),$(GENCODE_13))
CUDA_LIBDIR := $(firstword $(patsubst %/libcublas.so,%,$(wildcard $(CUDA_HOME)/lib64/libcublas.so \
                 $(CUDA_HOME)/targets/*/lib/libcublas.so $(CUDA_HOME)/lib/libcublas.so \
                 /usr/lib/x86_64-linux-gnu/libcublas.so /usr/lib64/libcublas.so)))
ifeq ($(CUDA_LIBDIR),)
$(error nvcc is $(NVCC) but libcublas.so is not under $(CUDA_HOME) (lib64, targets/*/lib) nor /usr/lib*; set CUDA_HOME or CUDA=no)
endif
NVCCFLAGS := -std=c++17 -O2 -g -I. -I$(CUDA_HOME)/include $(GENCODE) -Werror all-warnings \
             -Xcompiler -Wall,-Wextra,-Werror,-fno-omit-frame-pointer -MMD -MP
override CFLAGS += -DPN_HAVE_CUDA=1 -I$(CUDA_HOME)/include
CUDA_LDLIBS := -L$(CUDA_LIBDIR) -Wl,-rpath,$(CUDA_LIBDIR) -lcudart_static -ldl -lrt -lstdc++
endif

# NCCL (--transport nccl): where CUDA is built and nccl.h exists (CUDA 13 ships it in its
# own include/ and lib64/; else the distribution's). libnccl is dlopen'ed by its path found
# here, so no binary links it. NCCL_HOME= overrides the search.
NCCL_HOME ?= $(firstword $(patsubst %/include/nccl.h,%,$(wildcard $(CUDA_HOME)/include/nccl.h /usr/include/nccl.h)))
NCCL_LIB  := $(firstword $(wildcard $(NCCL_HOME)/lib64/libnccl.so.2 $(NCCL_HOME)/lib/libnccl.so.2 \
               $(NCCL_HOME)/lib/x86_64-linux-gnu/libnccl.so.2 /usr/lib/x86_64-linux-gnu/libnccl.so.2))
ifneq ($(and $(CUDA_SRCS),$(NCCL_HOME)),)
override CFLAGS += -DPN_HAVE_NCCL=1 -I$(NCCL_HOME)/include -DPN_NCCL_LIB='"$(or $(NCCL_LIB),libnccl.so.2)"'
endif

LIB_SRCS := $(wildcard common/*.c schedules/*.c models/*.c netem/*.c pipeline/*.c) \
            $(filter-out bench/main.c,$(wildcard bench/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/%.o) $(CUDA_SRCS:%.cu=$(BUILD)/%.cu.o)
TEST_SRCS := $(wildcard tests/test_*.c)
TEST_BINS := $(TEST_SRCS:tests/%.c=$(BUILD)/tests/%)
BENCH_SRCS := $(wildcard tests/bench_*.c)
BENCH_BINS := $(BENCH_SRCS:tests/%.c=$(BUILD)/tests/%)
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)

# libFuzzer targets (clang): the library again with coverage and ASan/UBSan in
# build-fuzz/, one binary per tests/fuzz/fuzz_*.c; `make fuzz` runs each for FUZZ_SECONDS
# on its corpus (tests/fuzz/corpus/<target>/, seeds committed, new finds kept in build-fuzz/).
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_BUILD   := build-fuzz
FUZZ_SAN     := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS  := $(filter-out -Werror,$(CFLAGS_BASE)) -O1 -g $(FUZZ_SAN) $(PKG_CFLAGS)
FUZZ_LIB_OBJS := $(LIB_SRCS:%.c=$(FUZZ_BUILD)/%.o)
FUZZ_BINS    := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)

.PHONY: all deps test test-run bench bench-run run probe clean fuzz fuzz-build test-faults test-valgrind gpu-pack \
        gencode reproduce-dtfm
.DEFAULT_GOAL := all

# Each build folder has its own binary; ./pipenem is the plain build's, so a sanitizer
# build never leaves an instrumented ./pipenem behind.
all: probe $(BUILD)/pipenem $(if $(SANITIZE),,pipenem) $(TEST_BINS) $(BENCH_BINS)

probe:
	@missing=""; for p in $(PKGS); do pkg-config --exists $$p || missing="$$missing $$p"; done; \
	  if [ -n "$$missing" ]; then echo "make: pkg-config cannot find:$$missing (run 'make deps')" >&2; exit 1; fi
	@echo "# probe: cc=$(CC) cuda=$(if $(HAVE_CUDA),$(NVCC),none)$(if $(CUDA_SRCS), $(NVCC_MAJOR).x gencode='$(GENCODE)' cublas=$(CUDA_LIBDIR), (no .cu sources built)) nccl=$(if $(and $(CUDA_SRCS),$(NCCL_HOME)),$(or $(NCCL_LIB),libnccl.so.2),none) sanitize=$(or $(SANITIZE),none) build=$(BUILD)"

deps:
	@bash .ci/deps

# The architectures a CUDA build compiles for, read from nvcc as above (tests/test_make_gencode.c
# drives it with fake nvcc versions).
gencode:
	@echo 'nvcc $(or $(NVCC_MAJOR),none).x gencode: $(if $(CUDA_SRCS),$(GENCODE),none)'

$(BUILD)/libpipenem.a: $(LIB_OBJS)
	@mkdir -p $(@D)
	$(AR) rcs $@ $^

$(BUILD)/pipenem: $(BUILD)/bench/main.o $(BUILD)/libpipenem.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LDLIBS)

pipenem: $(BUILD)/pipenem
	cp $< $@

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/%.cu.o: %.cu
	@mkdir -p $(@D)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/%.c $(BUILD)/libpipenem.a $(BUILD)/pipenem
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $< $(BUILD)/libpipenem.a $(LDLIBS) $(CUDA_LDLIBS)

# The README's commands: each sets up what it needs first.
test: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) all
	@bash tests/run.sh $(BUILD)/tests

bench: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) all
	@bash tests/run.sh --bench $(BUILD)/tests

run: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) all
	@bash tests/main-job.sh

# DT-FM's GPT-3 small table reproduced into results/reference/dtfm-gpt3-small/ (~15 minutes)
reproduce-dtfm: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) all
	@bash results/reference/dtfm-gpt3-small/reproduce.sh

$(FUZZ_BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c -o $@ $<

$(FUZZ_BUILD)/libpipenem.a: $(FUZZ_LIB_OBJS)
	$(AR) rcs $@ $^

$(FUZZ_BUILD)/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_BUILD)/libpipenem.a
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_BUILD)/libpipenem.a $(LDLIBS)

fuzz-build: $(FUZZ_BINS)

# Each target runs FUZZ_SECONDS; a finding (crash, leak, timeout) fails the run and leaves
# the reproducer in build-fuzz/findings/.
fuzz: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) fuzz-build
	@bash tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

# The fault matrix (root: namespaces for the link cases); prints one row per case.
test-faults: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) all
	@bash tests/faults/matrix.sh $(BUILD)/pipenem

# The unit tests that run library code in their own process (no stage processes, UCX or
# namespaces) under valgrind's memcheck.
VALGRIND_TESTS ?= test_cli test_sched test_sim test_netem_profile test_bench_metrics \
                  test_bench_predict test_bench_results test_models_errors
test-valgrind: deps
	@$(MAKE) --no-print-directory $(SUBJOBS) all
	@bash tests/run.sh --valgrind $(BUILD)/tests $(VALGRIND_TESTS)

# What tests/gpu/check.sh needs on a GPU machine: the binaries and the libraries a bare
# machine lacks, in build-gpu/pack.tar.gz (carry build-gpu; run tests/gpu/check.sh there).
gpu-pack: all
	@$(if $(CUDA_SRCS),bash tests/gpu/pack.sh $(BUILD) build-gpu,echo "make gpu-pack: built without CUDA (no nvcc found; CUDA=$(CUDA))" >&2; exit 1)

clean:
	rm -rf build build-san build-fuzz build-gpu pipenem

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
