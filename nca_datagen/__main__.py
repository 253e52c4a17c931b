"""`python -m nca_datagen ...` = the `nca-datagen` console script, for machines where the script is not on
PATH (an image's python with `pip install --target`, or scripts installed beside another interpreter)."""

from nca_datagen.cli import main

if __name__ == "__main__":
    main(prog_name="nca-datagen")
