#!/usr/bin/env bash
# Packs what tests/gpu/check.sh needs on a bare GPU machine (no UCX, libnl, OpenBLAS,
# cmocka or libcsv there, nothing to download): the pipenem binary and the cuda test and
# benchmark programs of BUILD, stripped of debug sections, plus every shared library they
# load that is not part of a basic Linux system or of CUDA (cuBLAS stays: it is 600 MB with
# cuBLASLt, and any machine with a CUDA toolkit or the nvidia-cublas wheel has it; check.sh
# finds it). Writes OUT/pack.tar.gz and prints its size.
# usage: tests/gpu/pack.sh [BUILD=build] [OUT=build-gpu]
set -euo pipefail
build=${1:-build}
out=${2:-build-gpu}
bins=(pipenem tests/test_models_cuda tests/test_models_cuda_gpu tests/bench_models_cuda)
# loaded from the target system: libc and friends, the C++ runtime, CUDA and its driver
system='^(libc|libm|libpthread|libdl|librt|libresolv|libutil|ld-linux-x86-64|linux-vdso|libstdc\+\+|libgcc_s|libcublas|libcublasLt|libcudart|libcuda|libnvidia-.*)\.so'
for b in "${bins[@]}"; do
	[ -x "$build/$b" ] || { echo "pack: $build/$b is missing: build first (make all)" >&2; exit 1; }
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib"
for b in "${bins[@]}"; do
	cp "$build/$b" "$stage/bin/"
	strip --strip-debug "$stage/bin/$(basename "$b")"
done
for b in "${bins[@]}"; do
	ldd "$build/$b" | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}'
done | sort -u | while read -r soname path; do
	if [[ ! $soname =~ $system ]]; then
		cp -L "$path" "$stage/lib/$soname"
	fi
done
# what a bare machine will load: every library outside the system/CUDA list above must
# resolve into the pack (ldd with only the pack's folder added to the search path)
for b in "$stage"/bin/*; do
	LD_LIBRARY_PATH=$stage/lib ldd "$b" | awk '$2 == "=>" {print $1, $3}' | while read -r soname path; do
		if [[ ! $soname =~ $system ]] && [[ $path != "$stage/lib/"* ]]; then
			echo "pack: $(basename "$b") loads $soname from ${path:-nowhere}, not from the pack" >&2
			exit 1
		fi
	done
done
echo "# gpu pack: ldd of every packed binary finds each non-system library in the pack"
mkdir -p "$out"
tar czf "$out/pack.tar.gz" -C "$stage" .
size=$(stat -c %s "$out/pack.tar.gz")
echo "# gpu pack: $out/pack.tar.gz $(du -h "$out/pack.tar.gz" | cut -f1) ($(du -sh "$stage" | cut -f1) unpacked)"
if [ "$size" -ge $((64 << 20)) ]; then
	echo "pack: $out/pack.tar.gz is $size bytes: over the 64 MiB that travels with the working tree" >&2
	exit 1
fi
ls "$stage/bin" "$stage/lib" | sed 's/^/#   /'
