# Sourced by the scripts that run on the GPU machine: cuBLAS (which the engine opens at run time)
# from the machine's CUDA toolkit, or from PyTorch's wheels; added to LD_LIBRARY_PATH once.
for lib in /usr/local/cuda/lib64 /usr/local/cuda*/lib64 $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in os.listdir(p)))' 2>/dev/null); do
    [ -e "$lib/libcublas.so.13" ] || continue
    case ":${LD_LIBRARY_PATH:-}:" in *":$lib:"*) ;; *) export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ;; esac
    break
done
